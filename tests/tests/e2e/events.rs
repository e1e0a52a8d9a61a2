//! S3 event notifications (`catalog.events`), with the periodic sync off: moto's S3 notifies
//! moto's SQS of every object created in or removed from the catalog bucket, and the server
//! applies each batch as a targeted sync. A drive put into the bucket becomes searchable, a
//! deleted one disappears, a message that is not an S3 event is dropped without stopping the
//! others, and a drive whose event was lost is found by the next listing (`syncCatalog`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use milepost_schema::enums::Role;
use milepost_store::{ObjectStore as _, S3Store};
use milepost_testkit::{MotoServer, TestApp};
use serde_json::{json, Value};

const BUCKET: &str = "fleet";
const QUEUE: &str = "catalog-events";

fn sidecar(id: &str) -> Bytes {
    Bytes::from(
        json!({
            "drive_id": id,
            "vehicle": "ev-007",
            "city": "munich",
            "started_at": "2026-11-03T08:00:00Z",
            "ended_at": "2026-11-03T08:45:00Z",
            "weather": "snow",
            "tags": ["events"],
        })
        .to_string(),
    )
}

fn key(id: &str) -> String {
    format!("drives/2026-11-03/ev-007/{id}/drive.json")
}

async fn count(app: &TestApp, token: &str, query: &str) -> i64 {
    let (_, body) = app
        .graphql(
            Some(token),
            "query($q: String!) { search(query: $q, first: 1) { totalCount } }",
            json!({ "q": query }),
        )
        .await;
    body["data"]["search"]["totalCount"]
        .as_i64()
        .unwrap_or_else(|| panic!("search {query:?}: {body}"))
}

/// Waits until searching `query` counts `expected`; returns how long that took.
async fn until_count(app: &TestApp, token: &str, query: &str, expected: i64) -> Duration {
    let started = Instant::now();
    loop {
        if count(app, token, query).await == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "search {query:?} never counted {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// moto, and a store over it whose catalog bucket exists; `None` without moto.
async fn moto_with_bucket() -> Option<(MotoServer, S3Store)> {
    let moto = MotoServer::start().await.expect("moto")?;
    let store = moto.store().expect("moto store");
    store
        .client()
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .expect("bucket");
    Some((moto, store))
}

#[tokio::test]
async fn s3_events_catalog_puts_and_deletes_and_the_listing_repairs_lost_ones() {
    let Some((moto, store)) = moto_with_bucket().await else {
        return;
    };
    let queue_url = moto.create_queue(QUEUE).await.expect("queue");
    moto.notify(BUCKET, Some(QUEUE))
        .await
        .expect("notifications");
    // A producer's mistake in the queue first: dropped, and the events after it still apply.
    moto.send(&queue_url, "this is not an S3 event")
        .await
        .expect("send");
    let events = format!("sqs://{queue_url}");
    let app = TestApp::builder()
        .upstream(moto.settings(), BUCKET)
        .configure(move |config| config.catalog.events = events)
        .start()
        .await;
    let admin = app.token("admin", Role::Admin).await;

    // Put: searchable without any listing (the periodic sync is off).
    store
        .put(BUCKET, &key("drv-ev-1"), sidecar("drv-ev-1"))
        .await
        .expect("put");
    let took = until_count(&app, &admin, "id:drv-ev-1 weather:snow", 1).await;
    eprintln!("put into the bucket, searchable after {took:?}");

    // Delete: gone from search.
    store
        .delete(BUCKET, &key("drv-ev-1"))
        .await
        .expect("delete");
    let took = until_count(&app, &admin, "id:drv-ev-1", 0).await;
    eprintln!("deleted from the bucket, gone from search after {took:?}");

    // A lost event: notifications off while a drive is put. No event, so nothing happens
    // (checked after the time the events above took, with room to spare), until the next
    // listing, which finds it.
    moto.notify(BUCKET, None).await.expect("notifications off");
    store
        .put(BUCKET, &key("drv-ev-2"), sidecar("drv-ev-2"))
        .await
        .expect("put");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        count(&app, &admin, "id:drv-ev-2").await,
        0,
        "cataloged without an event or a listing"
    );
    let (_, synced) = app
        .graphql(
            Some(&admin),
            "mutation { syncCatalog { objectsSeen errors } }",
            json!({}),
        )
        .await;
    assert_eq!(
        synced["data"]["syncCatalog"]["errors"],
        json!([]),
        "{synced}"
    );
    assert_eq!(count(&app, &admin, "id:drv-ev-2").await, 1);

    // The worker never failed: the malformed message was dropped, every event applied.
    let (_, workers) = app
        .graphql(
            Some(&admin),
            "{ workers { name state lastError } }",
            json!({}),
        )
        .await;
    let worker = workers["data"]["workers"]
        .as_array()
        .and_then(|all| all.iter().find(|w| w["name"] == "catalog_events"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(worker["name"], json!("catalog_events"), "{workers}");
    assert_eq!(worker["lastError"], Value::Null, "{workers}");
    app.shutdown().await;
}

#[tokio::test]
async fn sync_catalog_with_a_prefix_looks_at_that_prefix_only() {
    let Some((moto, store)) = moto_with_bucket().await else {
        return;
    };
    let app = TestApp::builder()
        .upstream(moto.settings(), BUCKET)
        .start()
        .await;
    let admin = app.token("admin", Role::Admin).await;
    for id in ["drv-p-1", "drv-p-2"] {
        store.put(BUCKET, &key(id), sidecar(id)).await.expect("put");
    }
    let prefix = "drives/2026-11-03/ev-007/drv-p-1/";
    let (_, synced) = app
        .graphql(
            Some(&admin),
            "mutation($p: String) { syncCatalog(prefix: $p) { objectsSeen errors } }",
            json!({ "p": prefix }),
        )
        .await;
    assert_eq!(
        synced["data"]["syncCatalog"],
        json!({ "objectsSeen": 1, "errors": [] }),
        "{synced}"
    );
    assert_eq!(count(&app, &admin, "id:drv-p-1").await, 1);
    assert_eq!(
        count(&app, &admin, "id:drv-p-2").await,
        0,
        "outside the prefix"
    );
    // Deleting drv-p-1 and rescanning another prefix leaves drv-p-1 alone: only its own
    // prefix's pass removes it.
    store.delete(BUCKET, &key("drv-p-1")).await.expect("delete");
    let (_, synced) = app
        .graphql(
            Some(&admin),
            "mutation($p: String) { syncCatalog(prefix: $p) { objectsSeen } }",
            json!({ "p": "drives/2026-11-03/ev-007/drv-p-2/" }),
        )
        .await;
    assert_eq!(synced["data"]["syncCatalog"]["objectsSeen"], json!(1));
    assert_eq!(count(&app, &admin, "id:drv-p-1").await, 1);
    assert_eq!(count(&app, &admin, "id:drv-p-2").await, 1);
    let (_, synced) = app
        .graphql(
            Some(&admin),
            "mutation($p: String) { syncCatalog(prefix: $p) { objectsSeen } }",
            json!({ "p": prefix }),
        )
        .await;
    assert_eq!(synced["data"]["syncCatalog"]["objectsSeen"], json!(0));
    assert_eq!(count(&app, &admin, "id:drv-p-1").await, 0);
    // A prefix outside the catalog's is refused, naming the argument.
    let (_, refused) = app
        .graphql(
            Some(&admin),
            "mutation($p: String) { syncCatalog(prefix: $p) { objectsSeen } }",
            json!({ "p": "elsewhere/" }),
        )
        .await;
    let message = refused["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("prefix"), "{refused}");
    app.shutdown().await;
}
