//! UploadPartCopy: parts whose bytes are ranges of another object (boto3's managed `copy` of
//! anything over 8 MiB uses it), with the source's conditions and ranges checked as S3 does.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use milepost_schema::enums::Role;

use super::{code, pattern, raw_status, sha, world, BUCKET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_part_copy_assembles_ranges_of_another_object() {
    let w = world().await;
    let (_, keys) = w.app.s3_token("ingest", Role::Engineer).await;
    let gw = w.app.s3_client(keys);
    let client = gw.client();
    let source = pattern(7 * 1024 * 1024 + 123, 9);
    let put = client
        .put_object()
        .bucket(BUCKET)
        .key("copy/source.bin")
        .body(ByteStream::from(source.clone()))
        .send()
        .await
        .expect("put source");
    let source_etag = put.e_tag().expect("etag").to_owned();

    let created = client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key("copy/target.bin")
        .send()
        .await
        .expect("create");
    let upload_id = created.upload_id().expect("upload id");
    let split = 5 * 1024 * 1024;
    let last = source.len() - 1;
    let mut parts = Vec::new();
    for (number, range) in [
        (1, format!("bytes=0-{}", split - 1)),
        (2, format!("bytes={split}-{last}")),
    ] {
        let copied = client
            .upload_part_copy()
            .bucket(BUCKET)
            .key("copy/target.bin")
            .upload_id(upload_id)
            .part_number(number)
            .copy_source(format!("{BUCKET}/copy/source.bin"))
            .copy_source_range(range)
            .copy_source_if_match(&source_etag)
            .send()
            .await
            .expect("upload part copy");
        let etag = copied
            .copy_part_result()
            .and_then(|r| r.e_tag())
            .expect("part etag")
            .to_owned();
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .e_tag(etag)
                .build(),
        );
    }
    // A range past the source's end, and a failed source condition, are refused.
    let err = client
        .upload_part_copy()
        .bucket(BUCKET)
        .key("copy/target.bin")
        .upload_id(upload_id)
        .part_number(3)
        .copy_source(format!("{BUCKET}/copy/source.bin"))
        .copy_source_range(format!("bytes=0-{}", source.len()))
        .send()
        .await
        .expect_err("range past the end");
    assert_eq!(code(&err), "InvalidRange");
    assert_eq!(raw_status(&err), 416);
    let err = client
        .upload_part_copy()
        .bucket(BUCKET)
        .key("copy/target.bin")
        .upload_id(upload_id)
        .part_number(3)
        .copy_source(format!("{BUCKET}/copy/source.bin"))
        .copy_source_if_match("\"00000000000000000000000000000000\"")
        .send()
        .await
        .expect_err("failed condition");
    assert_eq!(code(&err), "PreconditionFailed");

    client
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key("copy/target.bin")
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .expect("complete");
    let got = client
        .get_object()
        .bucket(BUCKET)
        .key("copy/target.bin")
        .send()
        .await
        .expect("get")
        .body
        .collect()
        .await
        .expect("body")
        .into_bytes();
    assert_eq!(got.len(), source.len());
    assert_eq!(sha(&got), sha(&source), "the copy has the source's bytes");
    w.app.shutdown().await;
}
