"""What can be checked of the Docker deployment without a Docker engine: the compose file's services,
healthchecks, volumes and profiles; the Dockerfile's stages, user, healthcheck and install commands against
CI's; the build context; and the app started the way compose starts it, against a real PostgreSQL."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from service.config import Settings
from service.storage import current_revision, head_revision, make_engine
from tests._ports import PortTaken, on_a_free_port, port_was_taken
from tests.conftest import LFW

yaml = pytest.importorskip("yaml", reason="the compose tests read YAML with PyYAML (the dev extra)")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


# What an operator's .env beside the compose file holds: the one variable compose requires.
OPERATOR_ENV = {"POSTGRES_PASSWORD": "from-the-env-file"}


class MissingVariable(KeyError):
    """Compose refuses to start when a `${VAR:?message}` variable is unset or empty."""


def _interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's `${VAR:-default}`, `${VAR:?message}` and `${VAR}` with the given environment (default: an
    operator's .env with only the required variables)."""
    env = OPERATOR_ENV if env is None else env

    def substitute(match: re.Match[str]) -> str:
        name, kind, rest = match.group(1), match.group(3), match.group(4)
        if env.get(name):
            return env[name]
        if kind == "?":
            raise MissingVariable(f"{name}: {rest}")
        return rest if kind == "-" else ""

    return re.sub(r"\$\{(\w+)(:([-?])([^}]*))?\}", substitute, value)


def _healthcheck_command(check: dict[str, Any]) -> str:
    test = check["test"]
    return " ".join(test[1:]) if isinstance(test, list) else str(test)


# --- the compose file ------------------------------------------------------------------------------


def test_postgres_keeps_its_data_in_a_named_volume_and_has_a_healthcheck() -> None:
    compose = _compose()
    postgres = compose["services"]["postgres"]

    assert postgres["image"].startswith("postgres:")
    assert "pgdata:/var/lib/postgresql/data" in postgres["volumes"]
    assert "pgdata" in compose["volumes"]
    assert "pg_isready" in _healthcheck_command(postgres["healthcheck"])
    assert "profiles" not in postgres


@pytest.mark.parametrize("service", ["api", "api-gpu"])
def test_the_api_waits_for_a_healthy_postgres_and_mounts_models_and_data(service: str) -> None:
    compose = _compose()
    api = compose["services"][service]

    assert api["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert set(api["volumes"]) == {"models:/models:ro", "data:/data"}
    assert {"models", "data"} <= set(compose["volumes"])
    assert "/readyz" in _healthcheck_command(api["healthcheck"])
    assert api["restart"] == "unless-stopped"


def test_the_api_is_configured_through_environment_variables_the_settings_know() -> None:
    compose = _compose()
    environment = compose["services"]["api"]["environment"]
    known = {f"FACEBANK_{name.upper()}" for name in Settings.model_fields}

    assert set(environment) <= known, f"unknown settings: {set(environment) - known}"
    url = make_url(_interpolate(environment["FACEBANK_DATABASE_URL"]))
    postgres = {k: _interpolate(v) for k, v in compose["services"]["postgres"]["environment"].items()}
    assert (url.drivername, url.host, url.port) == ("postgresql+psycopg", "postgres", 5432)
    assert (url.username, url.password, url.database) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )
    assert environment["FACEBANK_MODEL_DIR"] == "/models" and environment["FACEBANK_DATA_DIR"] == "/data"
    assert environment["FACEBANK_HOST"] == "0.0.0.0"


def test_there_is_no_default_database_password() -> None:
    compose = _compose()
    api_url = compose["services"]["api"]["environment"]["FACEBANK_DATABASE_URL"]
    postgres = compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    for value in (api_url, postgres):
        with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
            _interpolate(value, env={})
    assert make_url(_interpolate(api_url)).password == OPERATOR_ENV["POSTGRES_PASSWORD"]


def test_other_containers_may_call_the_api_by_its_service_name() -> None:
    """`ingest --url http://api:8000` from another container sends Host `api:8000`: it must pass the Host
    check (docs/deployment.md), and nothing beyond the service names is allowed by default."""
    from service.api.access import HostPolicy

    environment = _compose()["services"]["api"]["environment"]
    settings = Settings(host="0.0.0.0", allowed_hosts=_interpolate(environment["FACEBANK_ALLOWED_HOSTS"]))
    policy = HostPolicy(settings.host, settings.allowed_host_list)
    assert policy.allows("api:8000") and policy.allows("api-gpu:8000") and policy.allows("localhost:8000")
    assert not policy.allows("facebank.example.org")


def test_containers_drop_capabilities_and_cannot_gain_privileges() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
    # The API writes only to its volumes; its root file system is read-only with a memory-backed /tmp.
    for name in ("api", "api-gpu"):
        assert services[name]["read_only"] is True and services[name]["tmpfs"] == ["/tmp"], name
        assert "cap_add" not in services[name], name


def test_the_gpu_profile_reserves_one_gpu_and_runs_the_gpu_image_on_cuda() -> None:
    services = _compose()["services"]
    gpu = services["api-gpu"]

    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["target"] == "gpu" and services["api"]["build"]["target"] == "cpu"
    assert gpu["environment"]["FACEBANK_DEVICE"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert "profiles" not in services["api"], "plain `docker compose up` starts the CPU api"


def test_the_milvus_profile_runs_milvus_standalone_with_etcd_and_minio_pinned_and_kept_in_volumes() -> None:
    compose = _compose()
    services = compose["services"]
    for name in ("milvus", "milvus-etcd", "milvus-minio"):
        service = services[name]
        assert service["profiles"] == ["milvus"], name
        image, _, tag = service["image"].rpartition(":")
        assert image and tag not in ("", "latest") and any(c.isdigit() for c in tag), (
            name
        )  # pinned by version
        assert service["healthcheck"]["test"], name
        (volume,) = service["volumes"]
        assert volume.split(":")[0] in compose["volumes"], name
        assert "ports" not in service, f"{name} must not be published beyond the compose network"
    assert {"milvus-etcd", "milvus-minio"} <= set(services["milvus"]["depends_on"])
    # The API is pointed at it by FACEBANK_VECTOR_STORE=milvus alone; faiss stays the default.
    environment = {k: _interpolate(v) for k, v in services["api"]["environment"].items()}
    settings = Settings(**{k.removeprefix("FACEBANK_").lower(): v for k, v in environment.items()})
    assert settings.vector_store == "faiss" and settings.milvus_uri == "http://milvus:19530"
    switched = _interpolate(
        services["api"]["environment"]["FACEBANK_VECTOR_STORE"], {"FACEBANK_VECTOR_STORE": "milvus"}
    )
    assert switched == "milvus"


def test_models_are_prepared_into_the_models_volume_by_a_one_off_profile() -> None:
    prepare = _compose()["services"]["prepare"]

    assert prepare["profiles"] == ["prepare"] and prepare["build"]["target"] == "prepare"
    assert "models:/models" in prepare["volumes"]
    assert prepare["command"][:2] == ["models", "prepare"] and "/models" in prepare["command"]


def _compose_client() -> list[str] | None:
    """`docker compose` (v2) when the client has the plugin; it parses files without an engine."""
    if shutil.which("docker") is None:
        return None
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    return ["docker", "compose"] if probe.returncode == 0 else None


def test_docker_compose_config_accepts_the_file_with_every_profile() -> None:
    client = _compose_client()
    if client is None:
        pytest.skip("no `docker compose` (v2 plugin) on this machine; the YAML checks above still ran")
    profiles = ["--profile", "gpu", "--profile", "prepare", "--profile", "milvus"]
    result = subprocess.run(
        [*client, "-f", str(COMPOSE_FILE), *profiles, "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


# --- the Dockerfile and its build context --------------------------------------------------------------


def _stages() -> dict[str, list[str]]:
    """Dockerfile instructions per stage name (continuation lines joined)."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE):
            current = stages.setdefault(match.group(1) or f"stage{len(stages)}", [])
        current.append(line)
    return stages


def _pip_installs(lines: list[str]) -> list[str]:
    return [
        cmd.strip()
        for line in lines
        if line.startswith("RUN")
        for cmd in line[3:].split("&&")
        if "pip install" in cmd
    ]


def _extras(command: str) -> set[str]:
    (target,) = [word for word in shlex.split(command) if word.startswith(".[")]
    return set(target[2:-1].split(","))


def test_the_dockerfile_is_multi_stage_and_the_default_image_is_cpu() -> None:
    stages = _stages()

    assert len(stages) >= 4
    assert list(stages)[-1] == "cpu", "a plain `docker build .` must make the CPU image"
    assert {"cpu", "gpu", "prepare"} <= set(stages)
    assert any("CUDA_IMAGE" in line for line in stages["cuda-python"])


@pytest.mark.parametrize("stage", ["cpu", "gpu", "prepare"])
def test_every_image_runs_as_a_non_root_user_with_models_in_a_volume(stage: str) -> None:
    lines = _stages()[stage]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]

    assert users and users[-1] not in ("root", "0")
    assert any(line.startswith("VOLUME") and "/models" in line for line in lines)
    assert not any(
        line.startswith(("COPY", "ADD")) and re.search(r"\.(onnx|pth|pt)\b|shared|data", line)
        for line in lines
    )


@pytest.mark.parametrize("stage", ["cpu", "gpu"])
def test_the_serving_images_check_readyz(stage: str) -> None:
    lines = _stages()[stage]
    (healthcheck,) = [line for line in lines if line.startswith("HEALTHCHECK")]

    assert "/readyz" in healthcheck and "--start-period" in healthcheck
    assert any(line.startswith("EXPOSE 8000") for line in lines)
    assert 'CMD ["serve"]' in lines


def test_the_images_install_the_project_with_the_pip_commands_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    (ci_install,) = [cmd.strip() for cmd in ci.split("&&") if "pip install" in cmd]
    ci_words = shlex.split(ci_install)
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    stages = _stages()
    # The serving images carry the Milvus client too: FACEBANK_VECTOR_STORE=milvus needs no other image.
    expected = {
        "build-cpu": {"cpu", "milvus"},
        "build-gpu": {"gpu", "milvus"},
        "build-prepare": {"cpu", "train"},
    }

    for stage, extras in expected.items():
        (command,) = _pip_installs(stages[stage])
        words = shlex.split(command)
        assert _extras(command) == extras and extras <= declared
        # The same pip, flags and target form as CI, less `-e` (an image keeps no source tree to edit).
        assert words[0].endswith("/bin/pip") and ci_words[0].endswith("/bin/pip")
        assert [w for w in words[1:] if not w.startswith(".[")] == [
            w for w in ci_words[1:] if w != "-e" and not w.startswith(".[")
        ]
        assert any("python3 -m venv" in line for line in stages[stage])
    # CI installs the CPU flavour; the GPU extra replaces exactly those wheels.
    assert {"cpu", "train"} <= _extras(ci_install) and "gpu" not in _extras(ci_install)


def _copied_sources() -> set[str]:
    sources = set()
    for lines in _stages().values():
        for line in lines:
            if line.startswith("COPY ") and "--from" not in line:
                sources.update(line.split()[1:-1])
    return sources


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_weights_or_venv() -> None:
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [rule for rule in rules if rule and not rule.startswith("#")]
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}

    assert rules[0] == "*", "an allow-list: anything not named stays out of the context"
    assert _copied_sources() == allowed
    assert {"**/*.onnx", "**/*.pth", "**/*.pt", "**/__pycache__/"} <= set(rules)
    assert not ({".venv", "tests", ".git", "data", "weights"} & allowed)


def test_a_wheel_built_from_the_build_context_carries_migrations_manifest_and_page(tmp_path: Path) -> None:
    context = tmp_path / "context"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.onnx", "*.pth", "*.pt", "*.egg-info")
    for source in _copied_sources():
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, context / source, ignore=ignore)
        else:
            context.mkdir(exist_ok=True)
            shutil.copyfile(path, context / source)

    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "out"),
            str(context),
        ],
        capture_output=True,
        text=True,
    )

    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "out").glob("facebank-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = {"migrations/env.py", "migrations/versions/0001_initial.py"}
    assert migrations | {"service/runtime/manifest.toml"} <= names
    assert {"service/api/static/index.html", "service/api/static/app.js", "service/ingest/cli.py"} <= names
    assert not any(name.endswith((".onnx", ".pth", ".pt")) for name in names)


# --- the app as compose starts it, against PostgreSQL ---------------------------------------------------


def _serve(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """The server and its base URL, on a free port (another one if that was taken meanwhile)."""
    return on_a_free_port(
        lambda port: (_serve_on(env | {"FACEBANK_PORT": str(port)}, port), f"http://127.0.0.1:{port}")
    )


def _serve_on(env: dict[str, str], port: int) -> subprocess.Popen[str]:
    # The image's ENTRYPOINT ["facebank"] + CMD ["serve"], with the configuration only in the environment.
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            stderr = process.stderr.read() if process.stderr else ""
            if port_was_taken(stderr):
                raise PortTaken(f"port {port} was taken before the server bound it")
            raise AssertionError(stderr or "the server exited")
        assert time.monotonic() < deadline, "not ready in 90 s"
        time.sleep(0.2)


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.postgres
@pytest.mark.shared
@pytest.mark.slow
def test_the_app_serves_from_postgres_configured_by_the_compose_environment_and_keeps_faces_across_restarts(
    fresh_postgres_url: str, model_dir: Path, tmp_path: Path
) -> None:
    local = make_url(fresh_postgres_url)
    environment = {k: _interpolate(str(v)) for k, v in _compose()["services"]["api"]["environment"].items()}
    # Only what differs between a container and this machine: where PostgreSQL, the models and the data
    # are, and the bind address (compose binds 0.0.0.0 inside the container, which needs an API key).
    compose_url = make_url(environment["FACEBANK_DATABASE_URL"])
    environment["FACEBANK_DATABASE_URL"] = compose_url.set(
        host=local.host,
        port=local.port,
        username=local.username,
        password=local.password,
        database=local.database,
    ).render_as_string(hide_password=False)
    environment |= {
        "FACEBANK_MODEL_DIR": str(model_dir),
        "FACEBANK_DATA_DIR": str(tmp_path / "data"),
        "FACEBANK_HOST": "127.0.0.1",
    }  # and FACEBANK_PORT, set by _serve
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEBANK_")} | environment
    env["PYTHONPATH"] = str(ROOT)
    photo = next(LFW.glob("Aaron_Peirsol/*.jpg")).read_bytes()

    server, base = _serve(env)
    try:
        identity = httpx.post(f"{base}/v1/identities", json={"name": "Aaron Peirsol"}).json()
        enrolled = httpx.post(f"{base}/v1/identities/{identity['id']}/faces", files={"image": photo})
        assert enrolled.status_code == 201, enrolled.text
    finally:
        _stop(server)

    server, base = _serve(env)  # a new container: the index is rebuilt from PostgreSQL
    try:
        ready = httpx.get(f"{base}/readyz").json()
        found = httpx.post(f"{base}/v1/identify", files={"image": photo}).json()
    finally:
        _stop(server)
    assert ready["checks"]["faces"] == 1 and ready["checks"]["index_in_step"]
    assert found["faces"][0]["identity"]["name"] == "Aaron Peirsol"
    engine = make_engine(fresh_postgres_url)
    assert current_revision(engine) == head_revision()
    engine.dispose()


# Two replicas starting at once: each builds the whole app state (migrations under the advisory lock,
# models, index rebuilt from SQL). tests/storage covers upgrade_to_head alone; this is the start-up path.
_START_APP_IN_CHILD = """
import sys
from service.api.app import build_state
from service.config import Settings
settings = Settings(database_url=sys.argv[1], model_dir=sys.argv[2], data_dir=sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
state = build_state(settings)
print(len(state.serving.gallery.index), flush=True)
state.engine.dispose()
"""


@pytest.mark.postgres
@pytest.mark.shared
def test_two_app_processes_starting_on_a_fresh_postgres_database_at_once_both_start(
    fresh_postgres_url: str, model_dir: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _START_APP_IN_CHILD,
                fresh_postgres_url,
                str(model_dir),
                str(tmp_path / str(n)),
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    for child in children:  # both imported and waiting: release them together
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        stdout, stderr = child.communicate(timeout=120)
        assert child.returncode == 0, stderr
        assert stdout.strip() == "0"

    engine = make_engine(fresh_postgres_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    assert current_revision(engine) == head_revision()
    engine.dispose()
