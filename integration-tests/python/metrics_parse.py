"""Scrapes a server's GET /metrics and parses it with the official Prometheus client's strict
OpenMetrics parser (prometheus_client.openmetrics.parser): a malformed exposition fails here.

Prints one JSON line: {"<family>": {"type": t, "samples": [[name, {labels}, value], ...]}}.
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

url = sys.argv[1]
with urllib.request.urlopen(url) as r:
    ctype = r.headers.get("Content-Type", "")
    text = r.read().decode()
assert ctype.startswith("application/openmetrics-text"), ctype
out = {}
for fam in text_string_to_metric_families(text):
    out[fam.name] = {
        "type": fam.type,
        "samples": [[s.name, s.labels, s.value] for s in fam.samples],
    }
print(json.dumps(out))
