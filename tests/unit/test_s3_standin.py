"""The lab's S3 STAND-IN checks AWS Signature V4 as S3 does: proven on AWS's own published example (S3 API
reference, "Signature Calculations for the Authorization Header", PUT Object), and by changing one thing at a time."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.lab.s3_standin import signature_problem

KEYS = {"AKIAIOSFODNN7EXAMPLE": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
BODY = b"Welcome to Amazon S3."
THEN = datetime(2013, 5, 24, tzinfo=UTC)


def _headers(**changes: str) -> dict[str, str]:
    headers = {
        "host": "examplebucket.s3.amazonaws.com",
        "date": "Fri, 24 May 2013 00:00:00 GMT",
        "x-amz-date": "20130524T000000Z",
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "x-amz-content-sha256": "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
        "authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,"
        "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
    }
    return {**headers, **changes}


def test_aws_published_example_is_valid() -> None:
    assert signature_problem("PUT", "/test%24file.text", _headers(), BODY, KEYS, "us-east-1", THEN) is None


@pytest.mark.parametrize(("target", "headers", "body", "keys", "now", "code"), [
    ("/test%24file.txt", _headers(), BODY, KEYS, THEN, "SignatureDoesNotMatch"),
    ("/test%24file.text", _headers(host="other.s3.amazonaws.com"), BODY, KEYS, THEN, "SignatureDoesNotMatch"),
    ("/test%24file.text", _headers(), BODY, {"AKIAIOSFODNN7EXAMPLE": "another"}, THEN, "SignatureDoesNotMatch"),
    ("/test%24file.text", _headers(), b"Welcome to Amazon S4.", KEYS, THEN, "XAmzContentSHA256Mismatch"),
    ("/test%24file.text", _headers(), BODY, {"AKIAOTHER": "x"}, THEN, "InvalidAccessKeyId"),
    ("/test%24file.text", _headers(), BODY, KEYS, datetime(2013, 5, 25, tzinfo=UTC), "RequestTimeTooSkewed"),
    ("/test%24file.text", _headers(authorization="Basic Zm9vOmJhcg=="), BODY, KEYS, THEN, "AccessDenied"),
], ids=["path", "signed header", "secret", "body", "access key", "clock", "not sigv4"])
def test_one_change_is_refused(target, headers, body, keys, now, code) -> None:
    problem = signature_problem("PUT", target, headers, body, keys, "us-east-1", now)
    assert problem is not None and problem.startswith(code), problem
