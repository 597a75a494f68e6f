#!/usr/bin/env bash
# Posts the `wakafleet plan` of a pull request as one comment on it, updated in place on every
# push, so reviewers always see what merging would do.
#
# Environment: BASE_REF (the commit the PR merges into, e.g. origin/main), PR_NUMBER,
# GITHUB_REPOSITORY (owner/name), optionally FLEET_PATH (default `.`, the repository root).
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
# GitHub refuses comment bodies over 65,536 characters; stay well below in bytes.
max_bytes=60000

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
body=$work/body.md

# With --detailed-exitcode, 0 means no changes, 2 changes and anything else an error.
# `|| status=$?` keeps `set -e` from stopping here on the expected 2.
status=0
NO_COLOR=1 wakafleet plan "$fleet_path" --base "$BASE_REF" --format markdown --detailed-exitcode \
  >"$work/stdout" 2>"$work/stderr" || status=$?

if [[ $status == 0 || $status == 2 ]]; then
  cp "$work/stdout" "$body"
else
  # No plan: the diagnostics (stdout) and the error (stderr) take its place in the comment.
  {
    printf '%s\n### wakafleet plan failed\n\n' "$marker"
    printf '`wakafleet plan %s --base %s` exited with status %s:\n\n````text\n' \
      "$fleet_path" "$BASE_REF" "$status"
    # $(...) drops the trailing blank lines.
    printf '%s\n````\n' "$(cat "$work/stdout" "$work/stderr")"
  } >"$body"
fi

if (($(wc -c <"$body") > max_bytes)); then
  # Cut at a line boundary (the last, partial line is dropped) so no character is split.
  head -c "$max_bytes" "$body" | sed '$d' >"$work/cut"
  printf '\n*Truncated: run `wakafleet plan` locally to see all of it.*\n' >>"$work/cut"
  mv "$work/cut" "$body"
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
