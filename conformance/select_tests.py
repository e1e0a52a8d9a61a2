"""Which s3-tests are object-level conformance tests, and of which family.

Pure function of the s3-tests source (no network): every `test_*` function of
`s3tests/functional/test_s3.py` and `test_headers.py` is either

* assigned to one of the acceptance families (by its name, rules below), or
* assigned to an informational family (run and reported, never counted), or
* excluded, with the reason: it exercises a bucket-level feature the gateway deliberately
  does not offer (found by looking, transitively through the module's helper functions, at the
  boto3 APIs, keyword arguments, header strings and pytest marks it uses), or it is not an
  object-level test at all (bucket creation/naming/listing of buckets, RGW-only extensions).

`python3 conformance/select_tests.py [S3TESTS_DIR]` prints the classification as a table.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

MODULES = ("test_s3.py", "test_headers.py")

# The acceptance families, in report order: (id, title).
FAMILIES = [
    ("crud", "object CRUD & metadata"),
    ("ranges", "ranges"),
    ("conditional", "conditional reads/writes"),
    ("list_v1", "listings v1"),
    ("list_v2", "listings v2"),
    ("multipart", "multipart (incl. UploadPartCopy)"),
    ("copy", "copy"),
    ("delete_objects", "delete-objects"),
    ("checksums", "checksums"),
    ("auth", "SigV4 / presigned / auth failures"),
]
# Run and reported, but outside the acceptance's family list: not counted in the ratio.
INFORMATIONAL = [
    ("post_object", "POST object (HTML form uploads) - informational, not counted"),
]

# Name rules, first match wins; `None` is "not object-level".
FAMILY_RULES = [
    (None, r"^test_bucket_create_(?!special_key_names$)"),  # CreateBucket's own checks
    ("post_object", r"^test_post_object"),
    ("checksums", r"checksum|cksum"),
    ("conditional", r"if_?match|if_?none_?match|ifnonematch|ifnonmatch|ifmodifiedsince|"
                    r"ifunmodifiedsince|conditional"),
    ("list_v2", r"^test_bucket_listv2_|^test_basic_key_count$|^test_bucketv2_notexist$"),
    ("list_v1", r"^test_bucket_list_|^test_bucket_notexist$"),
    ("delete_objects", r"multi_objectv?2?_delete"),
    ("ranges", r"^test_ranged_"),
    ("multipart", r"multipart|upload_part_copy|_get_part$|resend_first"),
    ("copy", r"^test_object_copy_|^test_copy_"),
    ("auth", r"x_amz_expires|authenticated_expired|bad_auth|invalid_auth|anonymous|"
             r"_authorization_|_date_|_ua_|^test_object_raw_authenticated|"
             r"^test_object_put_authenticated|presigned|amz_date"),
    ("crud", r"^test_object_|^test_atomic_|^test_bucket_create_special_key_names$|"
             r"^test_100_continue|object_attributes$|^test_expected_bucket_owner$|"
             r"^test_delete_marker_nonversioned$|^test_head_object"),
]

# Tests whose name matches a family but which are about buckets, not objects.
BUCKET_LEVEL_BY_NAME = {
    "test_bucket_list_long_name": "bucket naming (a 61-character bucket name)",
}

# Bucket-level (or non-S3) features, detected in a test and the helpers it calls.
#   apis: boto3 client/resource attribute names; kwargs: keyword argument names;
#   strings: substrings of string constants (raw headers); funcs: s3-tests helpers;
#   marks: pytest marks.
FEATURES = [
    ("acl", "ACLs (bucket/object ACL APIs, grants, or canned ACLs relied on by another principal)",
     dict(apis={"put_bucket_acl", "get_bucket_acl", "put_object_acl", "get_object_acl", "Acl"},
          kwargs={"GrantFullControl", "GrantRead", "GrantReadACP", "GrantWrite",
                  "GrantWriteACP", "AccessControlPolicy"},
          strings={"x-amz-grant-"})),
    ("policy", "bucket policies, public access block, policy status",
     dict(apis={"put_bucket_policy", "get_bucket_policy", "delete_bucket_policy",
                "get_bucket_policy_status", "put_public_access_block",
                "get_public_access_block", "delete_public_access_block"},
          marks={"bucket_policy"})),
    ("versioning", "versioning (versioned buckets, version ids, delete markers)",
     dict(apis={"put_bucket_versioning", "get_bucket_versioning", "list_object_versions",
                "object_versions"},
          kwargs={"VersionId", "VersionIdMarker", "version_id", "versionId"},
          funcs={"check_configure_versioning_retry"},
          marks={"versioning"})),
    ("lifecycle", "lifecycle, transitions, restore, storage classes",
     dict(apis={"put_bucket_lifecycle_configuration", "put_bucket_lifecycle",
                "get_bucket_lifecycle_configuration", "get_bucket_lifecycle",
                "delete_bucket_lifecycle", "restore_object"},
          kwargs={"StorageClass"},
          marks={"lifecycle", "lifecycle_expiration", "lifecycle_transition",
                 "cloud_transition", "cloud_restore", "storage_class", "target_by_bucket"})),
    ("cors", "CORS",
     dict(apis={"put_bucket_cors", "get_bucket_cors", "delete_bucket_cors"})),
    ("website", "static website hosting",
     dict(apis={"put_bucket_website", "get_bucket_website", "delete_bucket_website"},
          marks={"s3website", "s3website_routing_rules", "s3website_redirect_location"})),
    ("tagging", "tagging (bucket and object tags)",
     dict(apis={"put_bucket_tagging", "get_bucket_tagging", "delete_bucket_tagging",
                "put_object_tagging", "get_object_tagging", "delete_object_tagging"},
          kwargs={"Tagging", "tagging"},
          strings={"x-amz-tagging"},
          marks={"tagging"})),
    ("encryption", "server-side encryption (SSE-C, SSE-KMS, SSE-S3, bucket encryption)",
     dict(apis={"put_bucket_encryption", "get_bucket_encryption", "delete_bucket_encryption"},
          kwargs={"SSECustomerAlgorithm", "SSECustomerKey", "SSECustomerKeyMD5",
                  "ServerSideEncryption", "SSEKMSKeyId", "CopySourceSSECustomerAlgorithm"},
          strings={"x-amz-server-side-encryption"},
          marks={"encryption", "sse_s3", "bucket_encryption"})),
    ("object_lock", "object lock, retention, legal hold",
     dict(apis={"put_object_lock_configuration", "get_object_lock_configuration",
                "put_object_retention", "get_object_retention", "put_object_legal_hold",
                "get_object_legal_hold"},
          kwargs={"ObjectLockEnabledForBucket", "ObjectLockMode", "ObjectLockLegalHoldStatus",
                  "BypassGovernanceRetention"})),
    ("logging", "bucket logging",
     dict(apis={"put_bucket_logging", "get_bucket_logging", "post_bucket_logging"},
          marks={"bucket_logging", "bucket_logging_cleanup", "fails_without_logging_rollover"})),
    ("notifications", "notifications",
     dict(apis={"put_bucket_notification_configuration"}, marks={"sns"})),
    ("ownership", "bucket ownership controls",
     dict(apis={"put_bucket_ownership_controls", "get_bucket_ownership_controls",
                "delete_bucket_ownership_controls"},
          kwargs={"ObjectOwnership"}, marks={"object_ownership"})),
    ("cross_account", "another account's buckets (bucket ownership between S3 accounts)",
     dict(funcs={"get_alt_client", "get_alt_iam_client"})),
    ("tenant", "RGW multi-tenancy (tenant:bucket names)",
     dict(funcs={"get_tenant_client", "get_v2_tenant_client", "get_tenant_iam_client",
                 "get_tenant_name"})),
    ("iam", "IAM users/accounts",
     dict(funcs={"get_iam_root_client", "get_iam_root_s3client", "create_iam_user_s3client",
                 "iam_root", "get_iam_client", "get_iam_s3client"},
          marks={"iam_user", "iam_account", "iam_role", "iam_tenant"})),
    ("delete_bucket", "bucket deletion during the test (buckets are configured, not deleted)",
     dict(apis={"delete_bucket"})),
    ("rgw_only", "RGW-only extensions (append, torrent, usage stats, unordered listing)",
     dict(apis={"get_object_torrent"}, marks={"appendobject", "s3select"},
          strings={"allow-unordered", "rgwx-", "x-rgw-"})),
]

# Canned ACLs (`ACL=`) only matter when another principal relies on them: anonymous access.
CANNED_ACL_KWARG = "ACL"
CANNED_ACL_CONSUMERS = {"get_unauthenticated_client"}


@dataclass
class FunctionFacts:
    apis: set = field(default_factory=set)
    kwargs: set = field(default_factory=set)
    strings: list = field(default_factory=list)
    names: set = field(default_factory=set)
    marks: set = field(default_factory=set)


def _facts(node: ast.FunctionDef) -> FunctionFacts:
    facts = FunctionFacts()
    for deco in node.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        text = ast.unparse(target)
        if text.startswith("pytest.mark."):
            facts.marks.add(text.split(".")[2])
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute):
            facts.apis.add(sub.attr)
        elif isinstance(sub, ast.keyword) and sub.arg:
            facts.kwargs.add(sub.arg)
        elif isinstance(sub, ast.Name):
            facts.names.add(sub.id)
        elif isinstance(sub, ast.arg):
            facts.names.add(sub.arg)  # fixtures by parameter name (iam_root)
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            facts.strings.append(sub.value.lower())
        elif isinstance(sub, ast.Dict):
            for key in sub.keys:
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    facts.kwargs.add(key.value)  # **{'ACL': ...} style
    return facts


@dataclass
class Test:
    module: str
    name: str
    family: str | None  # None: excluded
    reason: str  # family title, or why excluded
    marks: list = field(default_factory=list)  # the test's pytest marks (fails_on_aws, ...)


def classify(s3tests_dir: Path) -> list[Test]:
    functional = s3tests_dir / "s3tests" / "functional"
    tests: list[Test] = []
    for module in MODULES:
        tree = ast.parse((functional / module).read_text())
        functions = {
            n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)
        }
        facts = {name: _facts(fn) for name, fn in functions.items()}

        def closure(name: str) -> FunctionFacts:
            seen, stack = set(), [name]
            total = FunctionFacts()
            while stack:
                current = stack.pop()
                if current in seen:
                    continue
                seen.add(current)
                f = facts[current]
                total.apis |= f.apis
                total.strings += f.strings
                # Helpers often take a feature as an optional argument (`tagging=None`,
                # `version_id=None`) and only then pass the keyword on: keyword arguments
                # count in the test itself (where the helper's argument is given), except
                # canned ACLs, which helpers set unconditionally.
                if current == name:
                    total.kwargs |= f.kwargs
                else:
                    total.kwargs |= f.kwargs & {CANNED_ACL_KWARG}
                total.names |= f.names
                if current == name:
                    total.marks |= f.marks
                stack.extend(n for n in f.names if n in functions)
            return total

        for name in functions:
            if not name.startswith("test_"):
                continue
            test = _classify_one(module, name, closure(name))
            test.marks = sorted(facts[name].marks)
            tests.append(test)
    return tests


def _classify_one(module: str, name: str, f: FunctionFacts) -> Test:
    for feature, title, rule in FEATURES:
        hit = (
            f.apis & rule.get("apis", set())
            or f.kwargs & rule.get("kwargs", set())
            or f.names & rule.get("funcs", set())
            or f.marks & rule.get("marks", set())
            or any(s in text for s in rule.get("strings", ()) for text in f.strings)
        )
        if hit:
            return Test(module, name, None, f"bucket-level feature: {title}")
    if CANNED_ACL_KWARG in f.kwargs and f.names & CANNED_ACL_CONSUMERS:
        return Test(module, name, None,
                    "bucket-level feature: ACLs (canned ACLs granting anonymous access)")
    if name in BUCKET_LEVEL_BY_NAME:
        return Test(module, name, None, f"bucket-level: {BUCKET_LEVEL_BY_NAME[name]}")
    for family, pattern in FAMILY_RULES:
        if re.search(pattern, name):
            if family is None:
                break
            return Test(module, name, family, family_title(family))
    return Test(module, name, None,
                "not object-level (buckets: create/naming/head/location/list-buckets, "
                "or RGW-specific)")


def family_title(family: str) -> str:
    return dict(FAMILIES + INFORMATIONAL)[family]


def main() -> None:
    s3tests_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/s3-tests")
    tests = classify(s3tests_dir)
    if "--json" in sys.argv:
        json.dump([t.__dict__ for t in tests], sys.stdout, indent=1)
        return
    for t in tests:
        print(f"{t.module:15} {t.name:70} {t.family or '-':15} {t.reason}")


if __name__ == "__main__":
    main()
