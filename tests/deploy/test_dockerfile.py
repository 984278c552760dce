"""deploy/Dockerfile: static checks (no Docker engine here to build it).

Multi-stage (a builder with the venv, a slim runtime), a non-root user, no dev dependencies,
``messenger-worker`` as the entrypoint with the intake as the default command, a health check, the
two ports. The default command is parsed by the real CLI parser.
"""

from __future__ import annotations

import re
import shlex

import pytest

from tests.deploy.common import ROOT, Instruction, dockerfile_instructions, exec_form, parse_cli, stages


def only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [ins for ins in stage if ins.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def final() -> list[Instruction]:
    return stages()[-1]


def test_multi_stage_with_a_slim_runtime() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    names = [re.search(r"\bAS\s+(\S+)", s[0].args, re.I) for s in all_stages]
    assert names[0] is not None
    assert names[0].group(1) == "builder"
    for stage in all_stages:
        assert stage[0].args.startswith("${PYTHON_IMAGE} "), stage[0].args
    arg = next(
        i for i in dockerfile_instructions() if i.keyword == "ARG" and i.args.startswith("PYTHON_IMAGE=")
    )
    # the Python the project targets, slim, pinned by digest (never a floating tag alone)
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", arg.args), arg.args


def test_runtime_copies_the_venv_from_the_builder(final: list[Instruction]) -> None:
    copies = [i.args for i in final if i.keyword == "COPY"]
    assert any(c.startswith("--from=builder") and "/opt/venv" in c for c in copies), copies
    assert not any(i.keyword == "RUN" and "pip install" in i.args for i in final), "install in the builder"


def test_no_dev_dependencies_installed() -> None:
    runs = [i.args for i in dockerfile_instructions() if i.keyword == "RUN" and "pip install" in i.args]
    assert runs, "the builder must pip install the project"
    for run in runs:
        assert "[dev]" not in run, run
        assert not re.search(r"\.\[", run), f"no extras in the image: {run}"
        for tool in ("pytest", "mypy", "ruff"):
            assert tool not in run, run
    assert any(re.search(r"pip install (--\S+ )*\.(\s|$)", run) and "--no-deps" in run for run in runs), runs
    assert any("--require-hashes -r requirements/runtime.lock" in run for run in runs), (
        "install from the lock"
    )


def test_non_root_user(final: list[Instruction]) -> None:
    user = only(final, "USER").args
    name = user.split(":")[0]
    assert name not in ("root", "0"), user
    assert name.isdigit(), "a numeric UID lets Kubernetes' runAsNonRoot verify it"
    assert final.index(only(final, "USER")) > max(
        i for i, ins in enumerate(final) if ins.keyword in ("RUN", "COPY")
    ), "USER comes after every RUN/COPY of the final stage"


def test_entrypoint_and_default_command(final: list[Instruction]) -> None:
    assert exec_form(only(final, "ENTRYPOINT")) == ["messenger-worker"]
    cmd = exec_form(only(final, "CMD"))
    assert cmd == ["intake", "--host", "0.0.0.0", "--port", "8080"]
    args = parse_cli(cmd)
    assert args.command == "intake"
    parse_cli(["worker", "--concurrency", "8"])  # the worker's command in compose and k8s


def test_entrypoint_is_the_installed_script() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^messenger-worker = "worker\.cli:main"$', pyproject, re.M)


def test_healthcheck_uses_python(final: list[Instruction]) -> None:
    check = only(final, "HEALTHCHECK")
    assert "--interval=" in check.args
    assert "--timeout=" in check.args
    cmd = exec_form(check)
    assert cmd[:2] == ["python", "-c"], "no curl in python:slim"
    assert "/healthz" in cmd[2]
    assert ":8080/" in cmd[2]
    compile(cmd[2], "healthcheck", "exec")


def test_ports_and_stop_signal(final: list[Instruction]) -> None:
    exposed = {p for i in final if i.keyword == "EXPOSE" for p in shlex.split(i.args)}
    assert {"8080", "9808"} <= exposed
    assert only(final, "STOPSIGNAL").args == "SIGTERM"


def test_build_context_is_what_the_dockerfile_copies() -> None:
    copied = [
        i.args for i in dockerfile_instructions() if i.keyword == "COPY" and not i.args.startswith("--from")
    ]
    for args in copied:
        *sources, _dest = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()}
    for must in (".git", ".venv", ".env", "tests", ".data"):
        assert must in ignored, f".dockerignore must exclude {must}"
    for needed in ("worker", "pyproject.toml", "README.md"):
        assert needed not in ignored, f".dockerignore excludes {needed}, which the build copies"
