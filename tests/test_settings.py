"""Settings: errors name file:line: field, environment overrides, secrets from files or env."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings, SettingsError, load_secrets, load_settings, open_access


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "remediator.yaml"
    path.write_text(text)
    return path


def error_lines(path: Path | None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(SettingsError) as info:
        load_settings(path, env={} if env is None else env)
    return str(info.value).splitlines()


def test_every_error_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "listen_port: 70000\nexternal_url: ftp://x\nlimits:\n  max_body_bytes: 10\n  bogus: 1\nstore:\n  pth: x.db\n",
    )
    assert error_lines(path) == [
        f"{path}:1: listen_port: Input should be less than or equal to 65535",
        f"{path}:2: external_url: must be an http:// or https:// URL, got 'ftp://x'",
        f"{path}:7: store.pth: unknown field; did you mean `path`?",
        f"{path}:4: limits.max_body_bytes: Input should be greater than or equal to 1024",
        f"{path}:5: limits.bogus: unknown field",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [\n", ":2: invalid YAML: expected the node content, but found '<stream end>'"),
        ("dry_run: true\ndry_run: false\n", ':2: dry_run: duplicate key "dry_run" (first at line 1)'),
        ("- rules\n", ":1: the top level must be a mapping of settings"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    assert error_lines(path) == [f"{path}{message}"]


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert error_lines(missing) == [f"{missing}: cannot read: No such file or directory"]


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf", b"  \n\n", b"# all commented out\n", b"~\n"])
def test_a_file_without_settings_is_refused(tmp_path: Path, content: bytes) -> None:
    # It most likely lost its content; running on the defaults would silently drop its credentials.
    path = tmp_path / "remediator.yaml"
    path.write_bytes(content)
    assert error_lines(path) == [f"{path}: the file has no settings; write {{}} in it to run on the defaults"]


def test_an_explicitly_empty_mapping_is_defaults_with_base_dir_at_the_file(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "{}\n"), env={})
    assert settings.listen_port == 9095
    assert settings.base_dir == tmp_path.resolve()
    assert settings.resolve(settings.store.path) == tmp_path.resolve() / "var/remediator.db"


def test_a_leading_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "remediator.yaml"
    path.write_bytes(b"\xef\xbb\xbflisten_port: 9096\n")
    assert load_settings(path, env={}).listen_port == 9096


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "listen_port: 1000\nrules: [a.yaml]\nstore: {path: a.db}\n")
    env = {
        "REMEDIATOR_LISTEN_PORT": "2000",
        "REMEDIATOR_RULES": "x/*.yaml,y/*.yaml",
        "REMEDIATOR_STORE__PATH": "/var/b.db",
        "REMEDIATOR_LIMITS__MAX_CONCURRENT_EXECUTIONS": "3",
        "REMEDIATOR_CHANNEL_OPS_URL": "https://hooks.example/x",  # a secret, not a setting
        "REMEDIATOR_EXECUTION_ID": "ex-1",  # what the service gives its exec steps
        "OTHER_LISTEN_PORT": "1",
    }
    settings = load_settings(path, env=env)
    assert settings.listen_port == 2000
    assert settings.rules == ["x/*.yaml", "y/*.yaml"]
    assert settings.store.path == Path("/var/b.db")
    assert settings.limits.max_concurrent_executions == 3


def test_an_override_that_names_no_setting_is_an_error_naming_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "listen_port: 1000\n")
    env = {
        "REMEDIATOR_STORE__BAKEND": "postgresql",
        "REMEDIATOR_LISTEN_PROT": "9",
        "REMEDIATOR_LISTEN_PORT__X": "1",
        "REMEDIATOR_NOT_A_SETTING": "x",
    }
    assert error_lines(path, env) == [
        "environment REMEDIATOR_LISTEN_PORT__X: listen_port.x: listen_port has no setting 'x'",
        "environment REMEDIATOR_LISTEN_PROT: listen_prot: the settings has no setting 'listen_prot'; "
        "did you mean `listen_port`?",
        "environment REMEDIATOR_NOT_A_SETTING: not_a_setting: the settings has no setting 'not_a_setting'",
        "environment REMEDIATOR_STORE__BAKEND: store.bakend: store has no setting 'bakend'",
    ]


def test_an_empty_list_override_is_one_empty_glob() -> None:
    # The CLI and reload drop "" (no glob); documented here so the contract stays visible.
    assert load_settings(None, env={"REMEDIATOR_RULES": ""}).rules == [""]


def test_a_bad_override_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "listen_port: 1000\nlimits:\n  max_body_bytes: 10\n")
    env = {"REMEDIATOR_LISTEN_PORT": "many", "REMEDIATOR_LIMITS__OUTPUT_LIMIT_BYTES": "1"}
    assert error_lines(path, env) == [
        "environment REMEDIATOR_LISTEN_PORT: listen_port: Input should be a valid integer, unable to parse string as an "
        "integer",
        f"{path}:3: limits.max_body_bytes: Input should be greater than or equal to 1024",
        "environment REMEDIATOR_LIMITS__OUTPUT_LIMIT_BYTES: limits.output_limit_bytes: Input should be greater than or "
        "equal to 1024",
    ]


def test_defaults_without_a_file() -> None:
    assert error_lines(None, {"REMEDIATOR_DRY_RUN": "perhaps"}) == [
        "environment REMEDIATOR_DRY_RUN: dry_run: Input should be a valid boolean, unable to interpret input"
    ]
    assert load_settings(None, env={}) == Settings()


def test_secrets_from_files_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "bearer").write_text("b-token\n")
    (tmp_path / "secrets" / "basic").write_text("pw")
    (tmp_path / "secrets" / "operator").write_text("op\n")
    path = write(
        tmp_path,
        "webhook_auth:\n"
        "  bearer_token_file: secrets/bearer\n"
        "  basic_username: am\n"
        "  basic_password_file: secrets/basic\n"
        "operator:\n"
        "  token_file: secrets/operator\n",
    )
    secrets = load_secrets(load_settings(path, env={}), env={})
    assert (secrets.webhook_bearer_token, secrets.webhook_basic_password, secrets.operator_token) == (
        "b-token",
        "pw",
        "op",
    )
    # Secrets are not settings: they never appear in a dump of them.
    assert "b-token" not in load_settings(path, env={}).model_dump_json()


def test_secrets_from_env_win_and_need_no_file(tmp_path: Path) -> None:
    path = write(tmp_path, "webhook_auth:\n  bearer_token_file: missing\n")
    env = {"REMEDIATOR_WEBHOOK_BEARER_TOKEN": "from-env", "REMEDIATOR_OPERATOR_TOKEN": "op-env"}
    settings = load_settings(path, env=env)  # secret variables are not taken as settings
    secrets = load_secrets(settings, env=env)
    assert (secrets.webhook_bearer_token, secrets.operator_token) == ("from-env", "op-env")


@pytest.mark.parametrize(("content", "problem"), [(None, "cannot read secret file"), ("\n", "secret file")])
def test_missing_or_empty_secret_file_is_an_error_at_its_line(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    if content is not None:
        (tmp_path / "token").write_text(content)
    path = write(tmp_path, "listen_port: 9095\noperator:\n  token_file: token\n")
    with pytest.raises(SettingsError) as info:
        load_secrets(load_settings(path, env={}), env={})
    assert str(info.value).startswith(f"{path}:3: operator.token_file: {problem} {tmp_path}/token")


def test_basic_auth_needs_both_halves(tmp_path: Path) -> None:
    path = write(tmp_path, "webhook_auth:\n  basic_username: am\n")
    with pytest.raises(SettingsError) as info:
        load_secrets(load_settings(path, env={}), env={})
    assert (
        str(info.value) == f"{path}:1: webhook_auth: basic auth needs both basic_username and a password (file or env)"
    )


SECRET_VARIABLES = [
    "REMEDIATOR_WEBHOOK_BEARER_TOKEN",
    "REMEDIATOR_WEBHOOK_BASIC_PASSWORD",
    "REMEDIATOR_OPERATOR_TOKEN",
    "REMEDIATOR_CHANNEL_OPS_URL",
]


@pytest.mark.parametrize("variable", SECRET_VARIABLES)
@pytest.mark.parametrize("value", ["", "  \n"])
def test_a_secret_variable_set_but_empty_is_an_error_naming_it(tmp_path: Path, variable: str, value: str) -> None:
    # Empty must not mean "no secret": for the webhook's token that silently turned authentication off.
    path = write(
        tmp_path, "webhook_auth: {basic_username: am}\nescalation:\n  channels: [{name: ops, type: webhook}]\n"
    )
    env = {v: "s3cret" if v != "REMEDIATOR_CHANNEL_OPS_URL" else "https://hooks.example/x" for v in SECRET_VARIABLES}
    env[variable] = value
    with pytest.raises(SettingsError) as info:
        load_secrets(load_settings(path, env=env), env=env)
    assert str(info.value) == f"environment {variable}: is set but empty; give the secret or unset the variable"


def test_secret_variables_are_stripped_like_secret_files(tmp_path: Path) -> None:
    env = {"REMEDIATOR_WEBHOOK_BEARER_TOKEN": " tok\n"}
    assert load_secrets(load_settings(None, env=env), env=env).webhook_bearer_token == "tok"


def test_what_is_open_is_listed_for_the_start_up_warning(tmp_path: Path) -> None:
    nothing_set = open_access(load_secrets(load_settings(None, env={}), env={}))
    assert [line.split(":")[0] for line in nothing_set] == [
        "the webhook accepts unauthenticated requests",
        "no operator token",
        "no read token",
    ]
    env = {"REMEDIATOR_WEBHOOK_BEARER_TOKEN": "a", "REMEDIATOR_OPERATOR_TOKEN": "b", "REMEDIATOR_READ_TOKEN": "c"}
    assert open_access(load_secrets(load_settings(None, env=env), env=env)) == []


def test_server_settings_defaults_durations_and_overrides(tmp_path: Path) -> None:
    defaults = load_settings(None, env={}).server
    assert (defaults.keepalive_timeout, defaults.request_read_timeout, defaults.max_connections) == (75.0, 30.0, None)
    path = write(tmp_path, "server:\n  request_read_timeout: 1m\n  max_connections: 0\n")
    assert error_lines(path) == [f"{path}:3: server.max_connections: Input should be greater than or equal to 1"]
    settings = load_settings(path, env={"REMEDIATOR_SERVER__MAX_CONNECTIONS": "200"})
    assert (settings.server.request_read_timeout, settings.server.max_connections) == (60.0, 200)
