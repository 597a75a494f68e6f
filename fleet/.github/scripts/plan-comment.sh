#!/usr/bin/env bash
# Posts the `wakafleet plan` of a pull request as one comment on it, updated in place on every
# push, so reviewers always see what merging would do.
#
# Environment: BASE_REF (the commit the PR merges into, e.g. origin/main), PR_NUMBER,
# GITHUB_REPOSITORY (owner/name), optionally FLEET_PATH (default `.`, the repository root),
# WHOLE_PLAN_URL (where the whole plan is, e.g. the run's artifact of `--format json`, linked
# when the comment cannot hold all of it) and PLAN_MAX_BYTES (default 60000).
# Needs `wakafleet` and `gh` on PATH, gh authenticated (GH_TOKEN in GitHub Actions).
# Exits 0 when the plan was computed, with or without changes, and 1 otherwise; the comment is
# written in both cases, so it never shows a stale plan.
set -euo pipefail

: "${BASE_REF:?set BASE_REF to the base commit, e.g. origin/main}"
: "${PR_NUMBER:?set PR_NUMBER to the pull request number}"
: "${GITHUB_REPOSITORY:?set GITHUB_REPOSITORY to owner/name}"
fleet_path=${FLEET_PATH:-.}

# The Markdown plan starts with this hidden line; it is how the comment is found again.
marker='<!-- wakafleet-plan -->'
# GitHub refuses comment bodies over 65,536 characters; wakafleet keeps the plan within this
# many bytes itself, riskiest changes first, and says what it left out and where it is.
max_bytes=${PLAN_MAX_BYTES:-60000}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
body=$work/body.md

# With --detailed-exitcode, 0 means no changes, 2 changes and anything else an error.
# `|| status=$?` keeps `set -e` from stopping here on the expected 2.
status=0
NO_COLOR=1 wakafleet plan "$fleet_path" --base "$BASE_REF" --format markdown --detailed-exitcode \
  --max-bytes "$max_bytes" ${WHOLE_PLAN_URL:+--whole-plan "$WHOLE_PLAN_URL"} \
  >"$work/stdout" 2>"$work/stderr" || status=$?

if [[ $status == 0 || $status == 2 ]]; then
  cp "$work/stdout" "$body"
else
  # No plan: the diagnostics (stdout) and the error (stderr) take its place in the comment,
  # as many of their lines as the budget holds (the job log has them all), inside a fence
  # that is always closed.
  cat "$work/stdout" "$work/stderr" >"$work/diagnostics"
  lines=$(wc -l <"$work/diagnostics")
  room=$((max_bytes - 1000))
  if (($(wc -c <"$work/diagnostics") > room)); then
    # Whole lines only, so no character is split.
    head -c "$room" "$work/diagnostics" | sed '$d' >"$work/cut"
    mv "$work/cut" "$work/diagnostics"
  fi
  {
    printf '%s\n### wakafleet plan failed\n\n' "$marker"
    printf '`wakafleet plan %s --base %s` exited with status %s:\n\n````text\n' \
      "$fleet_path" "$BASE_REF" "$status"
    # $(...) drops the trailing blank lines.
    printf '%s\n````\n' "$(cat "$work/diagnostics")"
    shown=$(wc -l <"$work/diagnostics")
    if ((shown < lines)); then
      printf '\n*%s more lines are in the job log.*\n' "$((lines - shown))"
    fi
  } >"$body"
fi

# Also in the job log and, in GitHub Actions, on the run's summary page.
cat "$body"
if [[ -n ${GITHUB_STEP_SUMMARY:-} ]]; then
  cat "$body" >>"$GITHUB_STEP_SUMMARY"
fi

# The first earlier comment that starts with the marker (--jq runs on each page; a comment
# merely quoting the marker does not start with it).
ids=$(gh api "repos/$GITHUB_REPOSITORY/issues/$PR_NUMBER/comments" --paginate \
  --jq ".[] | select(.body | startswith(\"$marker\")) | .id")
id=${ids%%$'\n'*}

if [[ -n $id ]]; then
  gh api --method PATCH "repos/$GITHUB_REPOSITORY/issues/comments/$id" \
    -F "body=@$body" --silent
  echo "Updated comment $id on pull request #$PR_NUMBER."
else
  gh api --method POST "repos/$GITHUB_REPOSITORY/issues/$PR_NUMBER/comments" \
    -F "body=@$body" --silent
  echo "Commented on pull request #$PR_NUMBER."
fi

if [[ $status != 0 && $status != 2 ]]; then
  echo "wakafleet plan failed with status $status; see the comment above." >&2
  exit 1
fi
