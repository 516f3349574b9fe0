from core.redact import Redactor, collect_secrets


def test_known_secrets_and_secret_looking_fragments_are_masked():
    raw = {"works": [{"config": {"connection_string": "Endpoint=sb://h/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0",
                                 "headers": {"Authorization": "Bearer tok-123456"}, "password": "hunter22"}}]}
    redact = Redactor(collect_secrets(raw))
    text = ("cs Endpoint=sb://h/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0 pw hunter22 "
            "hdr tok-123456 url https://a.blob/x?sv=1&sig=abcDEF%2B&se=2 Authorization: Bearer zzzzzz "
            "AccountKey=Zm9vYmFy; X-Signature: t=1,v1=deadbeef")
    out = redact(text)
    for secret in ("c2VjcmV0", "hunter22", "tok-123456", "abcDEF%2B", "zzzzzz", "Zm9vYmFy", "deadbeef"):
        assert secret not in out, (secret, out)
    assert "https://a.blob/x" in out
