"""worker.messenger.refs: m.me refs must prove they were issued by us (HMAC, page-bound, expiring).

The issue this answers: a Messenger user who opened ``m.me/<page>?ref=braze_<someone else's id>``
got their own PSID written onto the victim's Braze profile. Every case below where ``check_ref``
gives no external id is one the old ``parse_ref`` accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

import pytest

from worker.messenger.refs import MAX_EXTERNAL_ID, RefCheck, check_ref, ref_mac, sign_ref

SECRET = "link-secret-0123456789abcdef0123456789"
OTHER_SECRET = "another-link-secret-0123456789abcdef"
PAGE = "1234567890"
NOW = 1_800_000_000.0
LATER = int(NOW) + 30 * 86_400
README = Path(__file__).resolve().parents[2] / "README.md"


def test_braze_documented_vector() -> None:
    """Braze's docs: ``{{'hey' | hmac_sha256_hex: 'secret_key'}}`` renders 8df897f8…508e (hex,
    lower case, the filter's argument is the key): the encoding ref_mac produces."""
    expected = "8df897f8da3d7992fe57c8dbc6f27578cfbf2dcc4d0fbb4000b8c924841d508e"
    assert hmac.new(b"secret_key", b"hey", hashlib.sha256).hexdigest() == expected
    # ref_mac is that filter applied to "<page_id>:<external_id>:<expires>"
    assert (
        ref_mac("secret_key", "1", "u", "2") == hmac.new(b"secret_key", b"1:u:2", hashlib.sha256).hexdigest()
    )


def test_a_signed_ref_links() -> None:
    ref = sign_ref(SECRET, PAGE, "user-42", LATER)
    assert re.fullmatch(rf"braze_user-42\.{LATER}\.[0-9a-f]{{64}}", ref)
    assert check_ref(ref, PAGE, SECRET, NOW) == RefCheck("user-42", None, "user-42")


def test_external_ids_with_dots_and_the_longest_id() -> None:
    for external_id in ("a.b.c", "1.2", "x" * MAX_EXTERNAL_ID, "A.b~c_d-9"):
        ref = sign_ref(SECRET, PAGE, external_id, LATER)
        assert check_ref(ref, PAGE, SECRET, NOW) == RefCheck(external_id, None, external_id)
    assert len(sign_ref(SECRET, PAGE, "x" * MAX_EXTERNAL_ID, 10**12 - 1)) == 284


def test_upper_case_hex_is_accepted() -> None:
    ref = sign_ref(SECRET, PAGE, "user-42", LATER)
    head, mac = ref.rsplit(".", 1)
    assert check_ref(f"{head}.{mac.upper()}", PAGE, SECRET, NOW) == RefCheck("user-42", None, "user-42")


def test_the_attack_an_unsigned_ref_links_nothing() -> None:
    assert check_ref("braze_victim-1", PAGE, SECRET, NOW) == RefCheck(None, "unsigned", "victim-1")


def test_a_wrong_mac_links_nothing() -> None:
    ref = sign_ref(SECRET, PAGE, "user-42", LATER)
    flipped = ref[:-1] + ("0" if ref[-1] != "0" else "1")
    assert check_ref(flipped, PAGE, SECRET, NOW) == RefCheck(None, "bad_signature", "user-42")
    forged = sign_ref(OTHER_SECRET, PAGE, "user-42", LATER)
    assert check_ref(forged, PAGE, SECRET, NOW) == RefCheck(None, "bad_signature", "user-42")


def test_an_attacker_cannot_reuse_their_own_mac_for_the_victim() -> None:
    """The attacker holds a valid ref of their own: swapping the id or the expiry breaks it."""
    own = sign_ref(SECRET, PAGE, "attacker", LATER)
    _, expires, mac = own.rsplit(".", 2)
    assert check_ref(f"braze_victim.{expires}.{mac}", PAGE, SECRET, NOW) == RefCheck(
        None, "bad_signature", "victim"
    )
    assert check_ref(f"braze_attacker.{int(expires) + 1}.{mac}", PAGE, SECRET, NOW) == RefCheck(
        None, "bad_signature", "attacker"
    )


def test_a_ref_is_bound_to_its_page() -> None:
    ref = sign_ref(SECRET, PAGE, "user-42", LATER)
    assert check_ref(ref, "999", SECRET, NOW) == RefCheck(None, "bad_signature", "user-42")


def test_an_expired_ref_links_nothing() -> None:
    ref = sign_ref(SECRET, PAGE, "user-42", int(NOW))
    assert check_ref(ref, PAGE, SECRET, NOW) == RefCheck(None, "link_expired", "user-42")
    assert check_ref(ref, PAGE, SECRET, NOW - 1).external_id == "user-42"  # type: ignore[union-attr]


def test_without_a_secret_nothing_links() -> None:
    ref = sign_ref(SECRET, PAGE, "user-42", LATER)
    assert check_ref(ref, PAGE, None, NOW) == RefCheck(None, "disabled", "user-42")
    assert check_ref(ref, PAGE, "", NOW) == RefCheck(None, "disabled", "user-42")
    assert check_ref("braze_user-42", PAGE, None, NOW) == RefCheck(None, "disabled", "user-42")


@pytest.mark.parametrize(
    "ref",
    [
        "braze_",
        "braze_user 1",
        "braze_user@example.com",
        "braze_us%20er",
        "braze_üser",
        "braze_user\n",
        "braze_" + "x" * (MAX_EXTERNAL_ID + 1),
        f"braze_user.{LATER}.{'g' * 64}",
        f"braze_user.{LATER}.{'a' * 64}\n",
    ],
)
def test_malformed_refs_link_nothing(ref: str) -> None:
    check = check_ref(ref, PAGE, SECRET, NOW)
    assert check is not None
    assert check.external_id is None
    assert check.refusal in {"malformed", "unsigned"}


def test_malformed_is_told_apart_from_unsigned() -> None:
    assert check_ref("braze_user 1", PAGE, SECRET, NOW) == RefCheck(None, "malformed", None)


@pytest.mark.parametrize("ref", ["", "braze", "BRAZE_user", "summer_coupon", None, 5, ["braze_x"]])
def test_refs_that_are_not_ours_are_not_refused(ref: object) -> None:
    assert check_ref(ref, PAGE, SECRET, NOW) is None


def test_signing_refuses_what_could_not_be_checked() -> None:
    with pytest.raises(ValueError, match="external_id"):
        sign_ref(SECRET, PAGE, "user 1", LATER)
    with pytest.raises(ValueError, match="expires"):
        sign_ref(SECRET, PAGE, "user", 10**12)


def render_readme_liquid(user_id: str, page_id: str, now: int, secret: str) -> str:
    """The README's m.me link template, evaluated the way Braze's Liquid does (only the
    constructs it uses: assign with date/plus, capture, output, hmac_sha256_hex)."""
    text = README.read_text(encoding="utf-8")
    line = next(li.strip() for li in text.splitlines() if "hmac_sha256_hex" in li and "m.me" in li)
    line = line.strip("`")
    assign = re.match(r'\{% assign link_expires = "now" \| date: "%s" \| plus: (\d+) %\}', line)
    assert assign, line
    expires = str(now + int(assign.group(1)))
    line = line[assign.end() :]
    line = line.replace("{{${user_id}}}", user_id).replace("{{link_expires}}", expires)
    line = line.replace("<PAGE_ID>", page_id).replace("<LINK_SECRET>", secret)
    capture = re.match(r"\{% capture link_message %\}(.*?)\{% endcapture %\}", line)
    assert capture, line
    message = capture.group(1)
    line = line[capture.end() :]
    mac = re.search(r'\{\{link_message \| hmac_sha256_hex: "([^"]+)"\}\}', line)
    assert mac, line
    digest = hmac.new(mac.group(1).encode(), message.encode(), hashlib.sha256).hexdigest()
    return line[: mac.start()] + digest + line[mac.end() :]


def test_the_readme_liquid_builds_a_ref_that_links() -> None:
    url = render_readme_liquid("user-42", PAGE, int(NOW), SECRET)
    match = re.fullmatch(r"https://m\.me/<PAGE_USERNAME>\?ref=(\S+)", url)
    assert match, url
    assert check_ref(match.group(1), PAGE, SECRET, NOW + 86_400) == RefCheck("user-42", None, "user-42")
    assert check_ref(match.group(1), "999", SECRET, NOW) == RefCheck(None, "bad_signature", "user-42")


def test_the_cli_prints_the_ref_the_template_builds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``messenger-worker link-ref``: what to compare Braze's preview of the link with."""
    from worker import cli

    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("LINK_SECRET", SECRET)
    assert cli.main(["link-ref", "--page", PAGE, "--external-id", "user-42", "--expires", str(LATER)]) == 0
    assert capsys.readouterr().out.strip() == sign_ref(SECRET, PAGE, "user-42", LATER)
    monkeypatch.delenv("LINK_SECRET")
    with pytest.raises(SystemExit, match="LINK_SECRET is not set"):
        cli.main(["link-ref", "--page", PAGE, "--external-id", "user-42"])
