"""
The DSN extension in the cores (RFC 3461 §4): the server advertises DSN,
checks and decodes RET and ENVID on MAIL and NOTIFY and ORCPT on RCPT, and
refuses what is malformed with ``501 5.5.4``, as it does a malformed SIZE;
the client builds and sends the same parameters from an envelope's values.

Every session script here is fed whole, one byte at a time and with trailing
data (:func:`tests.core.helpers.check`).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailframe.address import Mailbox
from mailframe.core import (
    ENVID_LENGTH,
    ORCPT_LENGTH,
    ClientEhlo,
    ClientMail,
    ClientRcpt,
    Command,
    Mail,
    Rcpt,
    Response,
    ServerConnection,
    dsn_mail_parameters,
    dsn_rcpt_parameters,
)
from mailframe.envelope import DSNOptions
from mailframe.reply import Reply
from tests.core.helpers import answer, check, run, session
from tests.core.test_client_helpers import Pair

EHLO = "EHLO client.example"
MAIL = "MAIL FROM:<alice@client.example>"
RCPT = "RCPT TO:<bob@mx.example>"
BOB = Mailbox("bob", "mx.example")
CAROL = Mailbox("carol", "mx.example")


def only_reply(script: bytes, **kwargs: Any) -> bytes:
    """The reply to the last line of *script*."""
    return check(script, **kwargs).replies[-1]


def test_ehlo_advertises_dsn() -> None:
    reply = check(session(EHLO)).replies[-1]
    assert reply.endswith(b"\r\n250-ENHANCEDSTATUSCODES\r\n250 DSN\r\n")
    reply = check(session(EHLO), extensions=("DSN", "SMTPUTF8")).replies[-1]
    assert reply.count(b"DSN") == 1


def test_mail_parameters_are_decoded() -> None:
    transcript = check(session(EHLO, f"{MAIL} RET=hdrs ENVID=abc+2Bdef+20x", RCPT))
    assert transcript.codes == [250, 250, 250]
    mail = transcript.events[1]
    assert isinstance(mail, Mail)
    assert (mail.ret, mail.envid) == ("HDRS", "abc+def x")
    # Policies still see the parameters as sent.
    assert mail.parameters == (("RET", "hdrs"), ("ENVID", "abc+2Bdef+20x"))


def test_rcpt_parameters_are_decoded_and_kept_by_the_transaction() -> None:
    script = session(
        EHLO,
        MAIL,
        f"{RCPT} NOTIFY=success,Failure ORCPT=rfc822;bob+2Bx@example.com",
        "RCPT TO:<carol@mx.example>",
        "RCPT TO:<dave@mx.example> NOTIFY=NEVER",
        "RCPT TO:<erin@mx.example> ORCPT=x-local;erin",
    )
    conn = ServerConnection("mx.example")
    assert run([script], conn=conn) == check(script)
    rcpt = check(script).events[2]
    assert rcpt == Rcpt(
        BOB,
        (("NOTIFY", "success,Failure"), ("ORCPT", "rfc822;bob+2Bx@example.com")),
        frozenset({"SUCCESS", "FAILURE"}),
        "rfc822;bob+x@example.com",
    )
    assert conn.transaction.recipients == [
        BOB,
        CAROL,
        Mailbox("dave", "mx.example"),
        Mailbox("erin", "mx.example"),
    ]
    assert conn.transaction.dsn == [
        (BOB, DSNOptions(frozenset({"SUCCESS", "FAILURE"}), "rfc822;bob+x@example.com")),
        (Mailbox("dave", "mx.example"), DSNOptions(frozenset({"NEVER"}))),
        (Mailbox("erin", "mx.example"), DSNOptions(orcpt="x-local;erin")),
    ]


def test_refused_recipients_and_rset_leave_no_options() -> None:
    conn = ServerConnection("mx.example")
    script = session(EHLO, MAIL, f"{RCPT} NOTIFY=NEVER", "RCPT TO:<carol@mx.example> NOTIFY=DELAY")

    def refuse_bob(conn: ServerConnection, command: Command) -> Reply | None:
        if isinstance(command, Rcpt) and command.recipient == BOB:
            return Reply(550, "5.1.1", "No such user")
        return None

    transcript = run([script], conn=conn, replier=refuse_bob)
    assert transcript.codes == [250, 250, 550, 250]
    assert conn.transaction.dsn == [(CAROL, DSNOptions(frozenset({"DELAY"})))]
    conn.receive_data(b"RSET\r\n")
    answer(conn)
    assert conn.transaction.dsn == []


def test_longest_values_are_accepted() -> None:
    envid = "e" * ENVID_LENGTH
    orcpt = "rfc822;" + "o" * (ORCPT_LENGTH - len("rfc822;"))
    transcript = check(session(EHLO, f"{MAIL} ENVID={envid}", f"{RCPT} ORCPT={orcpt}"))
    assert transcript.codes == [250, 250, 250]
    mail, rcpt = transcript.events[1:]
    assert isinstance(mail, Mail) and isinstance(rcpt, Rcpt)
    assert (mail.envid, rcpt.orcpt) == (envid, orcpt)


@pytest.mark.parametrize(
    ("parameters", "reply"),
    [
        ("RET=ALL", b"501 5.5.4 Bad RET parameter\r\n"),
        ("RET", b"501 5.5.4 Bad RET parameter\r\n"),
        ("RET=FULL RET=HDRS", b"501 5.5.4 Duplicate parameter: RET\r\n"),
        ("ret=full RET=FULL", b"501 5.5.4 Duplicate parameter: RET\r\n"),
        ("ENVID", b"501 5.5.4 Bad ENVID parameter\r\n"),
        ("ENVID=a+2", b"501 5.5.4 Bad ENVID parameter\r\n"),
        ("ENVID=a+ZZ", b"501 5.5.4 Bad ENVID parameter\r\n"),
        ("ENVID=a+", b"501 5.5.4 Bad ENVID parameter\r\n"),
        # RFC 3461 §4.4: printable ASCII only, so no line end, no 8-bit octet.
        ("ENVID=a+0D+0Ab", b"501 5.5.4 Bad ENVID parameter\r\n"),
        ("ENVID=a+7F", b"501 5.5.4 Bad ENVID parameter\r\n"),
        ("ENVID=caf+C3+A9", b"501 5.5.4 Bad ENVID parameter\r\n"),
        ("ENVID=\u00e9", b"501 5.5.4 Bad ENVID parameter\r\n"),
        ("ENVID=" + "e" * (ENVID_LENGTH + 1), b"501 5.5.4 Bad ENVID parameter\r\n"),
        ("ENVID=a ENVID=b", b"501 5.5.4 Duplicate parameter: ENVID\r\n"),
        ("ENVID=a=b", b"501 5.5.4 Bad parameter syntax: ENVID=a=b\r\n"),
        ("NOTIFY=NEVER", b"555 5.5.4 Unsupported MAIL parameter: NOTIFY\r\n"),
        ("RETURN=FULL", b"555 5.5.4 Unsupported MAIL parameter: RETURN\r\n"),
    ],
)
def test_mail_refused(parameters: str, reply: bytes) -> None:
    transcript = check(session(EHLO, f"{MAIL} {parameters}", RCPT))
    assert transcript.replies[-2:] == [reply, b"503 5.5.1 Error: need MAIL command\r\n"]
    assert transcript.errors == 2


@pytest.mark.parametrize(
    ("parameters", "reply"),
    [
        ("NOTIFY=NEVER,SUCCESS", b"501 5.5.4 Bad NOTIFY parameter\r\n"),
        ("NOTIFY=FAILURE,NEVER", b"501 5.5.4 Bad NOTIFY parameter\r\n"),
        ("NOTIFY=SUCCESS,SUCCESS", b"501 5.5.4 Bad NOTIFY parameter\r\n"),
        ("NOTIFY=success,SUCCESS", b"501 5.5.4 Bad NOTIFY parameter\r\n"),
        ("NOTIFY=SUCCESS,", b"501 5.5.4 Bad NOTIFY parameter\r\n"),
        ("NOTIFY=,DELAY", b"501 5.5.4 Bad NOTIFY parameter\r\n"),
        ("NOTIFY=ALWAYS", b"501 5.5.4 Bad NOTIFY parameter\r\n"),
        ("NOTIFY", b"501 5.5.4 Bad NOTIFY parameter\r\n"),
        ("NOTIFY=NEVER NOTIFY=NEVER", b"501 5.5.4 Duplicate parameter: NOTIFY\r\n"),
        ("ORCPT", b"501 5.5.4 Bad ORCPT parameter\r\n"),
        ("ORCPT=bob@example.com", b"501 5.5.4 Bad ORCPT parameter\r\n"),
        ("ORCPT=rfc822;", b"501 5.5.4 Bad ORCPT parameter\r\n"),
        ("ORCPT=;bob@example.com", b"501 5.5.4 Bad ORCPT parameter\r\n"),
        ("ORCPT=rfc(822);bob@example.com", b"501 5.5.4 Bad ORCPT parameter\r\n"),
        ("ORCPT=rfc822;bob+2@example.com", b"501 5.5.4 Bad ORCPT parameter\r\n"),
        ("ORCPT=rfc822;bob+0A@example.com", b"501 5.5.4 Bad ORCPT parameter\r\n"),
        ("ORCPT=rfc822;j+C3+B6rg@example.com", b"501 5.5.4 Bad ORCPT parameter\r\n"),
        (
            "ORCPT=rfc822;" + "o" * (ORCPT_LENGTH - len("rfc822;") + 1),
            b"501 5.5.4 Bad ORCPT parameter\r\n",
        ),
        ("ORCPT=rfc822;a ORCPT=rfc822;b", b"501 5.5.4 Duplicate parameter: ORCPT\r\n"),
        ("RET=FULL", b"555 5.5.4 Unsupported RCPT parameter: RET\r\n"),
    ],
)
def test_rcpt_refused(parameters: str, reply: bytes) -> None:
    transcript = check(session(EHLO, MAIL, f"{RCPT} {parameters}", "RCPT TO:<carol@mx.example>"))
    # The transaction goes on.
    assert transcript.replies[-2:] == [reply, b"250 2.1.5 OK\r\n"]
    assert transcript.recipients == 1


def test_utf8_orcpt_of_rfc_6533_is_taken() -> None:
    """RFC 6533 §3: utf-8-addr-xtext is printable ASCII."""
    transcript = check(session(EHLO, MAIL, f"{RCPT} ORCPT=utf-8;j\\x{{F6}}rg@example.com"))
    rcpt = transcript.events[-1]
    assert isinstance(rcpt, Rcpt)
    assert rcpt.orcpt == "utf-8;j\\x{F6}rg@example.com"


@pytest.mark.parametrize(
    "lines",
    [
        ("HELO client.example", f"{MAIL} RET=FULL"),
        ("HELO client.example", MAIL, f"{RCPT} NOTIFY=NEVER"),
    ],
)
def test_dsn_parameters_need_ehlo(lines: tuple[str, ...]) -> None:
    """RFC 5321 §4.1.1.11: no parameters unless EHLO advertised them."""
    assert only_reply(session(*lines))[:10] == b"555 5.5.4 "


@pytest.mark.parametrize("line", [f"{MAIL} ENVID=x", f"{MAIL} RET=FULL"])
def test_without_dsn_the_parameters_are_unknown(line: str) -> None:
    assert only_reply(session(EHLO, line)) == b"250 2.1.0 OK\r\n"
    script = session(EHLO, line, MAIL, f"{RCPT} NOTIFY=NEVER")
    transcript = run([script], conn=ServerConnection("mx.example", dsn=False))
    assert b"DSN" not in transcript.replies[1]
    assert transcript.codes == [250, 555, 250, 555]


# -- the client side ------------------------------------------------------------


def test_client_parameters_from_an_envelope() -> None:
    assert dsn_mail_parameters(None, None) == ()
    assert dsn_mail_parameters("hdrs", "abc+def x") == (
        ("RET", "HDRS"),
        ("ENVID", "abc+2Bdef+20x"),
    )
    assert dsn_rcpt_parameters(DSNOptions()) == ()
    options = DSNOptions(frozenset({"DELAY", "SUCCESS", "FAILURE"}), "rfc822;bob+x=y@example.com")
    assert dsn_rcpt_parameters(options) == (
        ("NOTIFY", "SUCCESS,FAILURE,DELAY"),
        ("ORCPT", "rfc822;bob+2Bx+3Dy@example.com"),
    )
    assert dsn_rcpt_parameters(DSNOptions(frozenset({"NEVER"}))) == (("NOTIFY", "NEVER"),)


@pytest.mark.parametrize(
    ("ret", "envid", "options", "expected"),
    [
        # What RFC 3461 does not allow is left out, so that it cannot stop
        # the mail; a received envelope never holds it.
        ("ALL", "ok", DSNOptions(), (("ENVID", "ok"),)),
        ("FULL", "line\r\nend", DSNOptions(), (("RET", "FULL"),)),
        (None, "e" * (ENVID_LENGTH + 1), DSNOptions(), ()),
        (
            None,
            None,
            DSNOptions(frozenset({"NEVER", "SUCCESS"}), "rfc822;ok"),
            (("ORCPT", "rfc822;ok"),),
        ),
        (None, None, DSNOptions(frozenset({"ALWAYS"})), ()),
        (None, None, DSNOptions(frozenset()), ()),
        (None, None, DSNOptions(frozenset({"DELAY"}), "no type"), (("NOTIFY", "DELAY"),)),
        (None, None, DSNOptions(orcpt="rfc822;j\u00f6rg@example.com"), ()),
        (None, None, DSNOptions(orcpt="rfc822;" + "x" * ORCPT_LENGTH), ()),
    ],
)
def test_client_leaves_out_what_cannot_be_sent(
    ret: str | None, envid: str | None, options: DSNOptions, expected: tuple[Any, ...]
) -> None:
    assert dsn_mail_parameters(ret, envid) + dsn_rcpt_parameters(options) == expected


PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E))
NOTIFY = st.one_of(
    st.just(frozenset({"NEVER"})),
    st.sets(st.sampled_from(["SUCCESS", "FAILURE", "DELAY"]), min_size=1).map(frozenset),
)


@given(
    st.sampled_from(["FULL", "HDRS"]),
    PRINTABLE.filter(lambda text: 0 < len(text) <= 30),
    NOTIFY,
    st.sampled_from(["rfc822", "utf-8", "x-local"]),
    PRINTABLE.filter(lambda text: 0 < len(text) <= 100),
)
def test_client_core_to_server_core(
    ret: str, envid: str, notify: frozenset[str], addr_type: str, address: str
) -> None:
    """What the client sends from an envelope's values, the server reads back."""
    pair = Pair()
    pair.exchange()
    pair.send(ClientEhlo("client.example"))
    pair.exchange()
    options = DSNOptions(notify, f"{addr_type};{address}")
    mail = ClientMail(Mailbox("alice", "client.example"), dsn_mail_parameters(ret, envid))
    rcpt = ClientRcpt(BOB, dsn_rcpt_parameters(options))
    pair.send(mail)
    [mail_reply] = pair.exchange()
    pair.send(rcpt)
    [rcpt_reply] = pair.exchange()
    assert isinstance(mail_reply, Response) and mail_reply.reply.code == 250
    assert isinstance(rcpt_reply, Response) and rcpt_reply.reply.code == 250
    server_mail, server_rcpt = [e for e in pair.server_events if isinstance(e, Mail | Rcpt)]
    assert isinstance(server_mail, Mail) and isinstance(server_rcpt, Rcpt)
    assert (server_mail.ret, server_mail.envid) == (ret, envid)
    assert server_rcpt.dsn == options
