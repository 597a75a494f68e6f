"""Parses a /metrics answer with Prometheus's own Python client, as a scraper would.

Reads the OpenMetrics text on stdin and prints its samples as JSON: a list of {"family",
"type", "name", "labels", "value"}. The parser refuses what Prometheus would refuse (a bad
name, a counter without `_total`, a histogram whose buckets do not add up, a missing
`# EOF`); it then exits 1 with the parser's message.
"""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    samples = []
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.append(
                    {
                        "family": family.name,
                        "type": family.type,
                        "name": sample.name,
                        "labels": sample.labels,
                        "value": sample.value,
                    }
                )
    except ValueError as error:
        print(f"not valid OpenMetrics: {error}", file=sys.stderr)
        sys.exit(1)
    json.dump(samples, sys.stdout)


main()
