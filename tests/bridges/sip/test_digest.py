"""Digest authentication (bridges/sip/digest.py; RFC 7616, RFC 2617, RFC 3261 §22)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridges.sip.digest import (
    ALGORITHMS,
    AUTH_HEADERS,
    DigestChallenge,
    DigestCredentials,
    DigestError,
    DigestServer,
    authorize,
    compute_ha1,
    compute_response,
    parse_challenge,
    parse_credentials,
    pick_challenge,
)
from bridges.sip.message import SipResponse, parse_message
from tests.bridges.sip import vector
from voice.errors import LocalProtocolError, RemoteProtocolError

# RFC 7616 §3.9.1 ----------------------------------------------------------------------------------------

RFC7616_CHALLENGE = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={alg}, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


@pytest.mark.parametrize(
    ("algorithm", "response"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_3_9_1_examples(algorithm: str, response: str) -> None:
    challenge = parse_challenge(RFC7616_CHALLENGE.format(alg=algorithm))
    assert challenge.qop == ("auth", "auth-int")
    assert challenge.algorithm == algorithm
    credentials = authorize(
        challenge,
        username="Mufasa",
        password="Circle of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce=RFC7616_CNONCE,
    )
    assert credentials.response == response
    assert credentials.to_header() == (
        'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", '
        f'algorithm={algorithm}, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, '
        f'cnonce="{RFC7616_CNONCE}", qop=auth, response="{response}", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    assert parse_credentials(credentials.to_header()) == credentials


def test_rfc2617_3_5_example() -> None:
    challenge = parse_challenge(
        'Digest\r\n realm="testrealm@host.com",\r\n qop="auth,auth-int",\r\n'
        ' nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",\r\n opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert challenge.algorithm == "MD5"
    credentials = authorize(
        challenge,
        username="Mufasa",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce="0a4f113b",
    )
    assert credentials.response == "6629fae49393a05397450978507c4ef1"
    header = parse_credentials(
        'Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", '
        'response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert header == DigestCredentials(
        username="Mufasa",
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        uri="/dir/index.html",
        response="6629fae49393a05397450978507c4ef1",
        cnonce="0a4f113b",
        opaque="5ccc069c403ebaf9f0171e9517f40e41",
        qop="auth",
        nc=1,
    )
    assert header.response == credentials.response


# SIP: the RFC 3665 §2.1 401 ------------------------------------------------------------------------------


def test_register_challenge_from_a_401() -> None:
    response = parse_message(vector("rfc3665_2_1_f2_401.txt"))
    assert isinstance(response, SipResponse) and response.status_code == 401
    challenge_header, credentials_header = AUTH_HEADERS[response.status_code]
    challenge = pick_challenge(response.headers.get_all(challenge_header))
    assert challenge == DigestChallenge(
        realm="atlanta.example.com",
        nonce="ea9c8e88df84f1cec4341ae6cbe5a359",
        algorithm="MD5",
        qop=("auth",),
        opaque="",
        stale=False,
    )
    credentials = authorize(
        challenge,
        username="bob",
        password="zanzibar",
        method="REGISTER",
        uri="sip:registrar.biloxi.example.com",
        cnonce="0a4f113b",
    )
    ha1 = hashlib.md5(b"bob:atlanta.example.com:zanzibar").hexdigest()
    ha2 = hashlib.md5(b"REGISTER:sip:registrar.biloxi.example.com").hexdigest()
    expected = hashlib.md5(f"{ha1}:ea9c8e88df84f1cec4341ae6cbe5a359:00000001:0a4f113b:auth:{ha2}".encode())
    assert credentials.response == expected.hexdigest()
    assert credentials_header == "Authorization"
    assert 'opaque=""' in credentials.to_header()


def test_pick_challenge_prefers_the_strongest_supported() -> None:
    values = [
        'Digest realm="r", nonce="n1", algorithm=MD5, qop="auth"',
        "Basic realm=r",
        'Digest realm="r", nonce="n2", algorithm=AKAv1-MD5, qop="auth"',
        'Digest realm="r", nonce="n3", algorithm=SHA-256, qop="auth"',
        "garbage ,,,",
    ]
    assert pick_challenge(values).nonce == "n3"
    with pytest.raises(DigestError):
        pick_challenge(values[1:3])


# Computations --------------------------------------------------------------------------------------------


def test_rfc2069_form_without_qop() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="abc"')
    credentials = authorize(challenge, username="u", password="p", method="INVITE", uri="sip:x@y")
    ha1 = hashlib.md5(b"u:r:p").hexdigest()
    ha2 = hashlib.md5(b"INVITE:sip:x@y").hexdigest()
    assert credentials.response == hashlib.md5(f"{ha1}:abc:{ha2}".encode()).hexdigest()
    assert credentials.qop is None and credentials.nc is None and credentials.cnonce is None
    assert "nc=" not in credentials.to_header()
    assert parse_credentials(credentials.to_header()) == credentials


def test_auth_int_and_sess() -> None:
    challenge = DigestChallenge("r", "n", algorithm="SHA-256-sess", qop=("auth-int",))
    credentials = authorize(
        challenge, username="u", password="p", method="MESSAGE", uri="sip:a@b", cnonce="c", nc=3, body=b"hi"
    )

    def h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    ha1 = h(f"{h('u:r:p')}:n:c")
    ha2 = h(f"MESSAGE:sip:a@b:{hashlib.sha256(b'hi').hexdigest()}")
    assert credentials.response == h(f"{ha1}:n:00000003:c:auth-int:{ha2}")
    assert credentials.qop == "auth-int" and credentials.nc == 3


def test_userhash() -> None:
    challenge = DigestChallenge("r", "n", algorithm="SHA-256", qop=("auth",), userhash=True)
    credentials = authorize(challenge, username="Mufasa", password="p", method="GET", uri="/", cnonce="c")
    assert credentials.username == hashlib.sha256(b"Mufasa:r").hexdigest()
    assert credentials.userhash and "userhash=true" in credentials.to_header()


def test_sha512_256_is_supported() -> None:
    assert "SHA-512-256" in ALGORITHMS
    ha1 = compute_ha1("SHA-512-256", "u", "r", "p")
    assert ha1 == hashlib.new("sha512_256", b"u:r:p").hexdigest()


def test_unsupported_challenges_are_errors() -> None:
    with pytest.raises(DigestError):
        authorize(
            DigestChallenge("r", "n", algorithm="AKAv1-MD5"), username="u", password="p", method="M", uri="u"
        )
    with pytest.raises(DigestError):
        authorize(
            DigestChallenge("r", "n", qop=("auth-conf",)), username="u", password="p", method="M", uri="u"
        )
    with pytest.raises(DigestError):
        compute_response(algorithm="CRC32", ha1="x", nonce="n", method="M", uri="u")


@pytest.mark.parametrize(
    "value",
    [
        "",
        'Basic realm="r"',
        'Digest nonce="n"',
        'Digest realm="r"',
        'Digest realm="r", nonce="n", realm="again"',
        'Digest realm="unterminated, nonce="n"',
        "Digest realm=r nonce=n",
        '"quoted" realm="r"',
    ],
)
def test_malformed_challenges(value: str) -> None:
    with pytest.raises(DigestError) as caught:
        parse_challenge(value)
    assert isinstance(caught.value, RemoteProtocolError)


@pytest.mark.parametrize(
    "value",
    [
        'Digest username="u", realm="r", nonce="n", uri="u"',
        'Digest username="u", realm="r", nonce="n", uri="u", response="x", qop=auth',
        'Digest username="u", realm="r", nonce="n", uri="u", response="x", qop=auth, nc=1, cnonce="c"',
        'Basic username="u"',
    ],
)
def test_malformed_credentials(value: str) -> None:
    with pytest.raises(DigestError):
        parse_credentials(value)


def test_challenge_header_round_trip() -> None:
    challenge = DigestChallenge(
        'r "quoted"',
        "n",
        algorithm="SHA-256",
        qop=("auth", "auth-int"),
        opaque="o",
        stale=True,
        domain="sip:x",
    )
    assert parse_challenge(challenge.to_header()) == challenge


# Server side ---------------------------------------------------------------------------------------------

SECRET = b"0123456789abcdef0123456789abcdef"


def answer(server: DigestServer, now: float, **kwargs: object) -> DigestCredentials:
    challenge = server.challenges(now)[0]
    params: dict[str, object] = {
        "username": "alice",
        "password": "s3cret",
        "method": "INVITE",
        "uri": "sip:agent@x",
    }
    params.update(kwargs)
    return authorize(challenge, cnonce="cn", **params)  # type: ignore[arg-type]


def test_server_challenge_and_verify() -> None:
    server = DigestServer("voice.example.com", SECRET)
    challenges = server.challenges(1000.0)
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    assert all(c.qop == ("auth",) and c.realm == "voice.example.com" for c in challenges)
    credentials = answer(server, 1000.0)
    header = parse_credentials(credentials.to_header())
    assert (
        server.verify(header, method="INVITE", now_s=1001.0, password="s3cret", request_uri="sip:agent@x")
        == "ok"
    )


def test_server_refuses_wrong_answers() -> None:
    server = DigestServer("voice.example.com", SECRET)
    good = answer(server, 0.0)
    assert server.verify(good, method="INVITE", now_s=1.0, password="wrong") == "invalid"
    assert server.verify(good, method="BYE", now_s=1.0, password="s3cret") == "invalid"
    assert (
        server.verify(good, method="INVITE", now_s=1.0, password="s3cret", request_uri="sip:other@x")
        == "invalid"
    )
    forged = replace(good, nonce="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert server.verify(forged, method="INVITE", now_s=1.0, password="s3cret") == "invalid"
    not_base64 = replace(good, nonce="***")
    assert server.verify(not_base64, method="INVITE", now_s=1.0, password="s3cret") == "invalid"
    other_realm = replace(good, realm="evil")
    assert server.verify(other_realm, method="INVITE", now_s=1.0, password="s3cret") == "invalid"
    other_server = DigestServer("voice.example.com", b"another secret of 32 bytes......")
    assert other_server.verify(good, method="INVITE", now_s=1.0, password="s3cret") == "invalid"


def test_server_stale_nonce_and_replay() -> None:
    server = DigestServer("voice.example.com", SECRET, nonce_ttl_s=60)
    credentials = answer(server, 0.0)
    assert server.verify(credentials, method="INVITE", now_s=61.0, password="s3cret") == "stale"
    assert server.challenges(61.0, stale=True)[0].stale
    fresh = answer(server, 100.0)
    assert server.verify(fresh, method="INVITE", now_s=101.0, password="s3cret") == "ok"
    assert server.verify(fresh, method="INVITE", now_s=102.0, password="s3cret") == "invalid"  # nc replayed
    challenge = DigestChallenge("voice.example.com", fresh.nonce, "SHA-256", ("auth",))
    second = authorize(
        challenge, username="alice", password="s3cret", method="INVITE", uri="sip:agent@x", nc=2
    )
    assert server.verify(second, method="INVITE", now_s=103.0, password="s3cret") == "ok"


def test_server_with_stored_ha1_md5_and_opaque() -> None:
    server = DigestServer("r", SECRET, algorithms=("MD5",), opaque="op")
    credentials = answer(server, 0.0, password="pw")
    ha1 = compute_ha1("MD5", "alice", "r", "pw")
    assert server.verify(credentials, method="INVITE", now_s=1.0, ha1=ha1) == "ok"
    no_opaque = replace(credentials, opaque=None)
    assert server.verify(no_opaque, method="INVITE", now_s=1.0, ha1=ha1) == "invalid"
    no_qop = replace(credentials, qop=None)
    assert server.verify(no_qop, method="INVITE", now_s=1.0, ha1=ha1) == "invalid"
    with pytest.raises(LocalProtocolError):
        server.verify(credentials, method="INVITE", now_s=1.0)


def test_server_configuration_errors() -> None:
    with pytest.raises(LocalProtocolError):
        DigestServer("r", b"short")
    with pytest.raises(LocalProtocolError):
        DigestServer("r", SECRET, algorithms=("CRC32",))


@given(
    username=st.text(min_size=1, max_size=20).filter(lambda s: "\r" not in s and "\n" not in s),
    password=st.text(max_size=20),
    algorithm=st.sampled_from(["MD5", "SHA-256", "MD5-sess", "SHA-256-sess", "SHA-512-256"]),
)
def test_client_and_server_agree(username: str, password: str, algorithm: str) -> None:
    server = DigestServer("realm", SECRET, algorithms=(algorithm,))
    challenge = parse_challenge(server.challenges(5.0)[0].to_header())
    credentials = authorize(challenge, username=username, password=password, method="REGISTER", uri="sip:r")
    parsed = parse_credentials(credentials.to_header())
    assert parsed == credentials
    assert server.verify(parsed, method="REGISTER", now_s=6.0, password=password) == "ok"
