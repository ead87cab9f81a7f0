"""
AUTH (RFC 4954): the command, the exchange of 334 challenges and base64
responses (which are lines of their own, up to 12288 octets), ``*`` to
cancel, and the ``AUTH=`` parameter of MAIL.

Every session script is fed whole, one byte at a time and with trailing
data (:func:`tests.core.helpers.check`).
"""

from __future__ import annotations

import base64

import pytest

from mailframe.address import NULL_PATH
from mailframe.core import (
    SASL_LINE,
    Auth,
    AuthCancel,
    AuthResponse,
    BadCommand,
    Command,
    CommandError,
    Limits,
    Mail,
    Noop,
    ServerConnection,
    State,
    parse_command,
    parse_sasl_response,
)
from mailframe.reply import Reply
from tests.core.helpers import GREETING, answer, by_type, check, session, state

EHLO = "EHLO client.example"
MAIL = "MAIL FROM:<alice@client.example>"
RCPT = "RCPT TO:<bob@mx.example>"
AUTH = ("AUTH PLAIN LOGIN",)
OK = Reply(235, "2.7.0", "Authentication successful")
PLAIN = base64.b64encode(b"\x00alice\x00secret").decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def challenge(text: bytes = b"") -> Reply:
    """A 334 challenge, as RFC 4954 §4 writes it: base64 and nothing else."""
    return Reply(334, None, base64.b64encode(text).decode())


class Login:
    """Answers AUTH LOGIN the way an adapter does: user name, password, 235."""

    def __init__(self, password: bytes = b"secret") -> None:
        self.password = password
        self.seen: list[bytes] = []

    def __call__(self, conn: ServerConnection, command: Command) -> Reply | None:
        if isinstance(command, Auth):
            self.seen = []
            return challenge(b"Username:")
        if isinstance(command, AuthResponse):
            self.seen.append(command.data)
            if len(self.seen) == 1:
                return challenge(b"Password:")
            return OK if command.data == self.password else None
        return None


# -- The exchange ----------------------------------------------------------------


def test_plain_with_initial_response() -> None:
    transcript = check(
        session(EHLO, f"AUTH PLAIN {PLAIN}", MAIL),
        extensions=AUTH,
        replier=by_type({Auth: OK}),
    )
    assert transcript.events[1] == Auth("PLAIN", b"\x00alice\x00secret")
    assert transcript.replies[2:] == [
        b"235 2.7.0 Authentication successful\r\n",
        b"250 2.1.0 OK\r\n",
    ]
    assert transcript.authenticated
    assert transcript.state is State.MAIL


def test_plain_without_initial_response() -> None:
    """RFC 4954 §4: an empty challenge, then the response on a line of its own."""
    replier = by_type({Auth: Reply(334, None, ""), AuthResponse: OK})
    transcript = check(session(EHLO, "AUTH PLAIN", PLAIN, "NOOP"), extensions=AUTH, replier=replier)
    assert transcript.events[1:] == [
        Auth("PLAIN", None),
        AuthResponse(b"\x00alice\x00secret"),
        Noop(),
    ]
    assert transcript.codes == [250, 334, 235, 250]
    assert transcript.authenticated


def test_login_two_step_exchange() -> None:
    transcript = check(
        session(EHLO, "AUTH LOGIN", b64(b"alice"), b64(b"secret"), "NOOP"),
        extensions=AUTH,
        replier=Login(),
    )
    assert transcript.events[1:] == [
        Auth("LOGIN", None),
        AuthResponse(b"alice"),
        AuthResponse(b"secret"),
        Noop(),
    ]
    assert transcript.replies[2:] == [
        b"334 VXNlcm5hbWU6\r\n",
        b"334 UGFzc3dvcmQ6\r\n",
        b"235 2.7.0 Authentication successful\r\n",
        b"250 2.0.0 OK\r\n",
    ]
    assert transcript.authenticated
    assert transcript.state is State.READY


def test_state_during_the_exchange() -> None:
    conn = ServerConnection("mx.example", extensions=AUTH)
    conn.send(GREETING)
    conn.receive_data(session(EHLO, "AUTH LOGIN", "NOOP"))
    answer(conn)
    assert conn.next_event() == Auth("LOGIN", None)
    conn.send(challenge(b"Username:"))
    assert state(conn) is State.AUTH
    # The line after a 334 is a response, whatever it looks like.
    assert conn.next_event() == AuthResponse(base64.b64decode("NOOP"))
    conn.send(Reply(535, "5.7.8", "Authentication credentials invalid"))
    assert state(conn) is State.READY
    assert not conn.authenticated


def test_failed_authentication_ends_the_exchange() -> None:
    transcript = check(
        session(EHLO, "AUTH LOGIN", b64(b"alice"), b64(b"wrong"), "NOOP", "AUTH LOGIN"),
        extensions=AUTH,
        replier=Login(),
    )
    assert transcript.codes == [250, 334, 334, 535, 250, 334]
    assert transcript.events[-2] == Noop()
    assert not transcript.authenticated
    assert transcript.state is State.AUTH


def test_refused_auth_changes_nothing() -> None:
    """The default: the core knows no mechanism (RFC 4954 §4: 504)."""
    transcript = check(session(EHLO, "AUTH CRAM-MD5", "NOOP"), extensions=AUTH)
    assert transcript.replies[2:] == [
        b"504 5.5.4 Unrecognized authentication type\r\n",
        b"250 2.0.0 OK\r\n",
    ]
    assert transcript.state is State.READY


def test_cancel() -> None:
    """RFC 4954 §4: "*" cancels, and the AUTH command gets 501."""
    transcript = check(
        session(EHLO, "AUTH LOGIN", "*", "NOOP"),
        extensions=AUTH,
        replier=by_type({Auth: challenge(b"Username:")}),
    )
    assert transcript.events[2] == AuthCancel()
    assert transcript.replies[3:] == [
        b"501 5.0.0 Authentication cancelled\r\n",
        b"250 2.0.0 OK\r\n",
    ]
    assert not transcript.authenticated
    assert transcript.state is State.READY


def test_cancel_after_a_response() -> None:
    transcript = check(
        session(EHLO, "AUTH LOGIN", b64(b"alice"), "*", "NOOP"),
        extensions=AUTH,
        replier=Login(),
    )
    assert transcript.codes == [250, 334, 334, 501, 250]


def test_empty_response_line() -> None:
    transcript = check(
        session(EHLO, "AUTH PLAIN", ""),
        extensions=AUTH,
        replier=by_type({Auth: Reply(334, None, "")}),
    )
    assert transcript.events[-1] == AuthResponse(b"")
    assert transcript.replies[-1] == b"535 5.7.8 Authentication credentials invalid\r\n"


@pytest.mark.parametrize(
    "response",
    [b"not base64!", b"QQ", b"=QQ=", b"QQ==QQ==", b"Q Q==", b"QQ==\x00", b"\xc3\xa9", b"**"],
    ids=repr,
)
def test_malformed_response(response: bytes) -> None:
    """RFC 4954 §4: 501 5.5.2, and the exchange is over; the next line is a command."""
    transcript = check(
        session(EHLO, "AUTH LOGIN") + response + b"\r\n" + session("NOOP"),
        extensions=AUTH,
        replier=by_type({Auth: challenge(b"Username:")}),
    )
    bad = transcript.events[2]
    # A response may carry credentials: the event does not keep it.
    assert bad == BadCommand(Reply(501, "5.5.2", "Error: invalid base64 in response"))
    assert transcript.replies[3:] == [
        b"501 5.5.2 Error: invalid base64 in response\r\n",
        b"250 2.0.0 OK\r\n",
    ]
    assert transcript.state is State.READY


def test_bare_lf_in_a_response() -> None:
    transcript = check(
        session(EHLO, "AUTH LOGIN") + b"YWxp\nY2U=\r\n" + session("NOOP"),
        extensions=AUTH,
        replier=by_type({Auth: challenge(b"Username:")}),
    )
    assert transcript.codes == [250, 334, 501, 250]


# -- Long responses (RFC 4954 §4: 12288 octets) -------------------------------------------


def test_a_12288_octet_response_is_accepted() -> None:
    secret = bytes(range(256)) * 36
    response = b64(secret)
    assert len(response) == SASL_LINE == 12288
    transcript = check(
        session(EHLO, "AUTH GSSAPI", response, "NOOP"),
        extensions=("AUTH GSSAPI",),
        replier=by_type({Auth: Reply(334, None, ""), AuthResponse: OK}),
    )
    assert transcript.events[2] == AuthResponse(secret)
    assert transcript.codes == [250, 334, 235, 250]


@pytest.mark.parametrize("extra", [1, 4, 100_000])
def test_a_longer_response_fails_auth(extra: int) -> None:
    """RFC 4954 §4: 500 5.5.6, once, and the exchange is over."""
    response = "A" * (SASL_LINE + extra)
    transcript = check(
        session(EHLO, "AUTH GSSAPI", response, "NOOP"),
        extensions=("AUTH GSSAPI",),
        replier=by_type({Auth: Reply(334, None, "")}),
        feedings=("whole", "trailing") if extra > 100 else ("whole", "bytewise", "trailing"),
    )
    assert transcript.events[2] == BadCommand(
        Reply(500, "5.5.6", "Error: authentication response too long")
    )
    assert transcript.codes == [250, 334, 500, 250]
    assert transcript.state is State.READY


def test_response_buffer_stays_bounded() -> None:
    conn = ServerConnection("mx.example", extensions=AUTH)
    conn.send(GREETING)
    conn.receive_data(session(EHLO, "AUTH PLAIN"))
    answer(conn)
    assert isinstance(conn.next_event(), Auth)
    conn.send(Reply(334, None, ""))
    for _ in range(100):
        conn.receive_data(b"A" * 4096)
        conn.next_event()
        assert conn.buffered <= SASL_LINE + 2
    conn.receive_data(b"\r\nNOOP\r\n")
    event = conn.next_event()
    assert isinstance(event, BadCommand) and event.reply.code == 500
    conn.send(conn.default_reply(event))
    assert conn.next_event() == Noop()


def test_commands_keep_their_limit() -> None:
    """Only responses get the long limit; an AUTH line is a command line."""
    conn = ServerConnection("mx.example", extensions=AUTH)
    initial = "A" * (conn.line_limit - len("AUTH PLAIN \r\n") + 1)
    transcript = check(session(EHLO, f"AUTH PLAIN {initial}"), extensions=AUTH)
    assert transcript.replies[-1] == b"500 5.5.2 Error: line too long\r\n"


def test_sasl_line_limit() -> None:
    assert Limits().sasl_line == 12288
    assert Limits(sasl_line=65536).sasl_line == 65536
    with pytest.raises(ValueError, match="sasl_line"):
        Limits(sasl_line=12287)
    response = "A" * 20000
    transcript = check(
        session(EHLO, "AUTH GSSAPI", response),
        extensions=("AUTH GSSAPI",),
        replier=by_type({Auth: Reply(334, None, "")}),
        limits=Limits(sasl_line=20000),
        feedings=("whole", "trailing"),
    )
    assert transcript.events[-1] == AuthResponse(base64.b64decode(response))


# -- The AUTH command ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "event"),
    [
        ("AUTH PLAIN", Auth("PLAIN", None)),
        ("auth plain", Auth("PLAIN", None)),
        ("AUTH Cram-MD5", Auth("CRAM-MD5", None)),
        ("AUTH SCRAM-SHA-256-PLUS", Auth("SCRAM-SHA-256-PLUS", None)),
        # RFC 4954 §4: "=" is an initial response of zero length.
        ("AUTH EXTERNAL =", Auth("EXTERNAL", b"")),
        (f"AUTH PLAIN {PLAIN}", Auth("PLAIN", b"\x00alice\x00secret")),
    ],
)
def test_auth_command(line: str, event: Auth) -> None:
    transcript = check(session(EHLO, line), extensions=AUTH, replier=by_type({Auth: OK}))
    assert transcript.events[-1] == event
    assert transcript.authenticated


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("AUTH", b"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"),
        ("AUTH ", b"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"),
        ("AUTH PLAIN a b", b"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"),
        ("AUTH PL@IN", b"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"),
        ("AUTH " + "X" * 21, b"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"),
        ("AUTH PLAIN QQ", b"501 5.5.2 Error: invalid base64 in initial response\r\n"),
        ("AUTH PLAIN ==", b"501 5.5.2 Error: invalid base64 in initial response\r\n"),
        ("AUTH PLAIN QQ==QQ==", b"501 5.5.2 Error: invalid base64 in initial response\r\n"),
        ("AUTH PLAIN *", b"501 5.5.2 Error: invalid base64 in initial response\r\n"),
        ("AUTH PLAIN d\u00e9", b"501 5.5.2 Error: invalid base64 in initial response\r\n"),
    ],
)
def test_auth_syntax(line: str, reply: bytes) -> None:
    transcript = check(session(EHLO, line, "NOOP"), extensions=AUTH)
    assert transcript.replies[-2:] == [reply, b"250 2.0.0 OK\r\n"]
    assert transcript.state is State.READY


def test_auth_not_offered() -> None:
    transcript = check(session(EHLO, "AUTH PLAIN", "AUTH", "NOOP"))
    assert transcript.replies[2:] == [
        b"503 5.5.1 Error: authentication not enabled\r\n",
        b"503 5.5.1 Error: authentication not enabled\r\n",
        b"250 2.0.0 OK\r\n",
    ]


def test_already_authenticated() -> None:
    transcript = check(
        session(EHLO, f"AUTH PLAIN {PLAIN}", f"AUTH PLAIN {PLAIN}", MAIL, "AUTH LOGIN"),
        extensions=AUTH,
        replier=by_type({Auth: OK}),
    )
    assert transcript.replies[2:] == [
        b"235 2.7.0 Authentication successful\r\n",
        b"503 5.5.1 Error: already authenticated\r\n",
        b"250 2.1.0 OK\r\n",
        b"503 5.5.1 Error: already authenticated\r\n",
    ]


@pytest.mark.parametrize("lines", [(MAIL,), (MAIL, RCPT)])
def test_auth_during_a_transaction(lines: tuple[str, ...]) -> None:
    """RFC 4954 §4: not permitted during a mail transaction."""
    transcript = check(session(EHLO, *lines, "AUTH PLAIN", RCPT), extensions=AUTH)
    assert transcript.replies[-2:] == [
        b"503 5.5.1 Error: MAIL transaction in progress\r\n",
        b"250 2.1.5 OK\r\n",
    ]


def test_auth_before_ehlo() -> None:
    transcript = check(session("AUTH PLAIN", EHLO), extensions=AUTH)
    assert transcript.replies[1] == b"503 5.5.1 Error: send HELO/EHLO first\r\n"
    assert transcript.state is State.READY


def test_auth_after_helo() -> None:
    transcript = check(
        session("HELO client.example", "AUTH PLAIN", EHLO, "AUTH PLAIN"),
        extensions=AUTH,
        replier=by_type({Auth: Reply(334, None, "")}),
    )
    assert transcript.replies[2] == b"503 5.5.1 Error: send EHLO first\r\n"
    assert transcript.codes[-1] == 334


def test_auth_in_no_service() -> None:
    transcript = check(
        session("AUTH PLAIN"), extensions=AUTH, greeting=Reply(554, None, "no service")
    )
    assert transcript.replies[1] == b"503 5.5.1 Error: no service here; only QUIT\r\n"


def test_pipelined_auth_with_initial_response() -> None:
    """RFC 4954 §4: AUTH PLAIN with its response may be followed by more commands."""
    transcript = check(
        session(EHLO, f"AUTH PLAIN {PLAIN}", MAIL, RCPT),
        extensions=AUTH,
        replier=by_type({Auth: OK}),
    )
    assert transcript.codes == [250, 235, 250, 250]


@pytest.mark.parametrize(
    ("reply", "codes"),
    [
        (Reply(250, "2.0.0", "OK"), "235 or 334"),
        (Reply(354, None, "go on"), "235 or 334"),
    ],
)
def test_auth_reply_codes(reply: Reply, codes: str) -> None:
    conn = ServerConnection("mx.example", extensions=AUTH)
    conn.send(GREETING)
    conn.receive_data(session(EHLO, "AUTH LOGIN", "*"))
    answer(conn)
    assert isinstance(conn.next_event(), Auth)
    with pytest.raises(RuntimeError, match=codes):
        conn.send(reply)
    conn.send(challenge())
    assert conn.next_event() == AuthCancel()
    with pytest.raises(RuntimeError, match="refusal"):
        conn.send(Reply(235, "2.7.0", "OK"))
    conn.send(conn.default_reply(AuthCancel()))
    assert state(conn) is State.READY


def test_failures_count_as_errors() -> None:
    """Guessing passwords runs into the error limit."""
    lines = [f"AUTH PLAIN {PLAIN}"] * 5
    transcript = check(session(EHLO, *lines), extensions=AUTH, limits=Limits(max_errors=3))
    assert transcript.codes == [250, 504, 504, 504]
    assert transcript.closed


# -- parse_sasl_response ------------------------------------------------------------------


def test_parse_sasl_response() -> None:
    assert parse_sasl_response(b"*") == AuthCancel()
    assert parse_sasl_response(b"") == AuthResponse(b"")
    assert parse_sasl_response(b"YWxpY2U=") == AuthResponse(b"alice")
    with pytest.raises(CommandError) as caught:
        parse_sasl_response(b"=")
    assert str(caught.value.reply) == "501 5.5.2 Error: invalid base64 in response"


# -- MAIL AUTH= (RFC 4954 §5) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "auth"),
    [
        ("<>", "<>"),
        ("alice@client.example", "alice@client.example"),
        ("alice+2Bsub@client.example", "alice+sub@client.example"),
        ("a+3Db@client.example", "a=b@client.example"),
        ("a+2bb@client.example", "a+b@client.example"),
        ("+22a+20b+22@client.example", '"a b"@client.example'),
    ],
)
def test_mail_auth_parameter(value: str, auth: str) -> None:
    transcript = check(session(EHLO, f"MAIL FROM:<a@b.example> AUTH={value}"), extensions=AUTH)
    event = transcript.events[-1]
    assert isinstance(event, Mail)
    assert event.auth == auth
    assert event.parameters == (("AUTH", value),)


@pytest.mark.parametrize(
    "parameter",
    [
        "AUTH",
        "AUTH=a+2",
        "AUTH=a+zz@b",
        "AUTH=a+0D+0Ab@c",
        "AUTH=a+00@b",
        "AUTH=\u00e9@b",
        "AUTH=+FF",
    ],
)
def test_malformed_mail_auth_parameter(parameter: str) -> None:
    transcript = check(session(EHLO, f"MAIL FROM:<a@b.example> {parameter}"), extensions=AUTH)
    assert transcript.replies[-1] == b"501 5.5.4 Bad AUTH parameter syntax\r\n"
    assert transcript.state is State.READY


def test_mail_auth_parameter_needs_auth() -> None:
    transcript = check(session(EHLO, "MAIL FROM:<a@b.example> AUTH=<>"))
    assert transcript.replies[-1] == b"555 5.5.4 Unsupported MAIL parameter: AUTH\r\n"
    assert parse_command(b"MAIL FROM:<> AUTH=<>", frozenset({"AUTH"})) == Mail(
        NULL_PATH, (("AUTH", "<>"),), auth="<>"
    )


def test_mail_without_auth_parameter() -> None:
    transcript = check(session(EHLO, MAIL), extensions=AUTH)
    event = transcript.events[-1]
    assert isinstance(event, Mail) and event.auth is None


def test_secrets_stay_out_of_repr() -> None:
    """Events end up in logs and tracebacks; responses may hold passwords."""
    assert "secret" not in repr(Auth("PLAIN", b"\x00alice\x00secret"))
    assert "secret" not in repr(AuthResponse(b"secret"))
    assert AuthResponse(b"a") != AuthResponse(b"b")
