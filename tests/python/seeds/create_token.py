# The "Create Token" seed example (seeds/create-token.txt), as written.
# Only the host and the credentials are substituted: BASE, TOKEN and USER_ID
# come from the environment (the test starts the server and sets them).
import json
import os

import requests

headers = {
    "Authorization": "Bearer " + os.environ["TOKEN"],
    "New-Api-User": os.environ["USER_ID"],
    "Content-Type": "application/json",
    "User-Agent": "Mozilla/5.0"
}

response = requests.post(
    os.environ["BASE"] + "/api/token/",
    headers=headers,
    json={
        "name": "Production",
        "remain_quota": 100000,
        "unlimited_quota": False,
        "expired_time": -1,
        "model_limits_enabled": True,
        "model_limits": json.dumps(["gpt-5.4", "claude-sonnet-4-6"]),
        "allow_ips": "203.0.113.10"
    }
)

print(response.json())
