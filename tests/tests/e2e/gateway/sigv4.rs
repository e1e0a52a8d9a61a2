//! SigV4 requests signed with the `Date` header instead of `X-Amz-Date`, as the SigV4
//! specification allows and some SDKs and tools send: accepted when the signature is right,
//! refused when it is not.

use chrono::Utc;
use milepost_schema::enums::Role;
use milepost_store::StaticCredentials;
use sha2::{Digest, Sha256};

use super::{pattern, world, BUCKET};

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let outer: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner_hash = Sha256::new()
        .chain_update(&inner)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&outer)
        .chain_update(inner_hash)
        .finalize()
        .to_vec()
}

/// A GET of `bucket/key` on `host`, signed (SigV4, header form) with `date` as the `Date`
/// header and no `X-Amz-Date`, by hand: the SDKs always send `X-Amz-Date`.
fn date_signed_get(
    host: &str,
    key: &str,
    keys: &StaticCredentials,
    secret: &str,
    now: chrono::DateTime<Utc>,
) -> reqwest::RequestBuilder {
    let http_date = now.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let basic = now.format("%Y%m%dT%H%M%SZ").to_string();
    let day = now.format("%Y%m%d").to_string();
    let path = format!("/{BUCKET}/{key}");
    let payload = "UNSIGNED-PAYLOAD";
    let canonical = format!(
        "GET\n{path}\n\ndate:{http_date}\nhost:{host}\nx-amz-content-sha256:{payload}\n\ndate;host;x-amz-content-sha256\n{payload}"
    );
    let scope = format!("{day}/us-east-1/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{basic}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut signing = hmac(format!("AWS4{secret}").as_bytes(), day.as_bytes());
    for part in ["us-east-1", "s3", "aws4_request"] {
        signing = hmac(&signing, part.as_bytes());
    }
    let signature = hex::encode(hmac(&signing, to_sign.as_bytes()));
    reqwest::Client::new()
        .get(format!("http://{host}{path}"))
        .header("date", http_date)
        .header("x-amz-content-sha256", payload)
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders=date;host;x-amz-content-sha256, Signature={signature}",
                keys.access_key_id
            ),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_signed_with_date_instead_of_x_amz_date() {
    let w = world().await;
    let (_, keys) = w.app.s3_token("ingest", Role::Engineer).await;
    let body = pattern(10_000, 3);
    w.app
        .s3_client(keys.clone())
        .client()
        .put_object()
        .bucket(BUCKET)
        .key("dated/object.bin")
        .body(body.clone().into())
        .send()
        .await
        .expect("put");
    let host = w.app.s3_endpoint().trim_start_matches("http://").to_owned();

    let response = date_signed_get(
        &host,
        "dated/object.bin",
        &keys,
        &keys.secret_access_key,
        Utc::now(),
    )
    .send()
    .await
    .expect("request");
    let status = response.status();
    let text = response.bytes().await.expect("body");
    assert_eq!(
        status,
        reqwest::StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&text)
    );
    assert_eq!(text, body);

    // The same with a wrong secret: the date is read, the signature still checked.
    let response = date_signed_get(&host, "dated/object.bin", &keys, "wrong", Utc::now())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN);
    let text = response.text().await.expect("body");
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");
    w.app.shutdown().await;
}
