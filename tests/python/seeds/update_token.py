# The "Update Token" seed example (seeds/update-token.txt), as written.
# Only the host and the credentials are substituted: BASE, TOKEN and USER_ID
# come from the environment (the test starts the server and sets them). The
# token id stays 10, as in the document: the test arranges for the token to
# update to have id 10.
import json
import os

import requests

headers = {
    "Authorization": "Bearer " + os.environ["TOKEN"],
    "New-Api-User": os.environ["USER_ID"],
    "Content-Type": "application/json",
    "User-Agent": "Mozilla/5.0"
}

response = requests.put(
    os.environ["BASE"] + "/api/token/",
    headers=headers,
    json={
        "id": 10,
        "name": "Production-Updated",
        "remain_quota": 200000,
        "model_limits_enabled": True,
        "model_limits": json.dumps(["gpt-5.4", "claude-sonnet-4-6"])
    }
)

print(response.json())
