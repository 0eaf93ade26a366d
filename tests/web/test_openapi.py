"""The served OpenAPI document against the running server, with schemathesis."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_serve import TOKEN, Served

SCHEMATHESIS = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")


@pytest.mark.timeout(300)
def test_server_conforms_to_its_openapi_document(tmp_path):
    relay = Served(tmp_path, "--db", "relay.db", "--max-tunnels-per-project", "100000",
                   env={"RELAY_API_TOKENS": f"p1:schemathesis:{TOKEN}"})
    config = tmp_path / "schemathesis.toml"
    # Aim the generated requests at the project of the token; other projects get 403, tested elsewhere.
    config.write_text('[parameters]\n"path.project_id" = "p1"\n')
    try:
        run = subprocess.run(
            [SCHEMATHESIS, "--config-file", str(config), "run", f"{relay.base}/openapi.json",
             "--checks", "all", "--header", f"X-Auth-Token: {TOKEN}",
             "--max-examples", "40", "--seed", "1", "--request-timeout", "10",
             "--generation-deterministic", "--no-color"],
            cwd=tmp_path, capture_output=True, text=True, timeout=280,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        )
    finally:
        relay.stop()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
