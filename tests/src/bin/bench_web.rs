//! `bench_web`: the web catalog's search page over a 1,000,000-document catalog.
//!
//! ```text
//! cargo build --release -p milepost-tests --bins
//! target/release/bench_search --dir /tmp/mp-1m --no-graphql   # builds the index and SQLite catalog
//! target/release/bench_web --dir /tmp/mp-1m [--rounds R]
//! ```
//!
//! Serves the data directory `bench_search` left behind with the real server, signs in with a
//! session cookie as a browser would, and times `GET /?q=...` (GraphQL executed in-process,
//! 20 hits resolved from SQLite with their sizes, six facets, the HTML rendered) for the same
//! query mix as `bench_search`: latency from request to the last byte of the page, client and
//! server in one process on loopback. Also reports the page weight: HTML plus the stylesheet
//! and script it loads (there are no images or fonts).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use milepost_api::config::{Config, Interval, ListenAddr};
use milepost_api::server::{self, AppState};
use milepost_schema::enums::Role;

use milepost_tests::search_mix::QUERIES;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn encode(q: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("static url");
    url.query_pairs_mut().append_pair("q", q);
    url.query().unwrap_or_default().to_owned()
}

fn main() -> anyhow::Result<()> {
    let mut dir: Option<PathBuf> = None;
    let mut rounds = 50usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => dir = Some(args.next().context("--dir needs a path")?.into()),
            "--rounds" => rounds = args.next().context("--rounds needs a number")?.parse()?,
            other => bail!("unknown argument {other}; usage: bench_web --dir PATH [--rounds R]"),
        }
    }
    let dir = dir.context("--dir PATH: a data directory built by `bench_search --dir PATH`")?;
    if !dir.join("catalog.db").exists() || !dir.join("search-index").exists() {
        bail!(
            "{} has no catalog.db and search-index: run bench_search --dir first",
            dir.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(dir, rounds))
}

async fn run(dir: PathBuf, rounds: usize) -> anyhow::Result<()> {
    let mut config = Config {
        data_dir: dir.clone(),
        ..Config::default()
    };
    config.server.listen = ListenAddr(([127, 0, 0, 1], 0).into());
    config.server.s3_listen = ListenAddr(([127, 0, 0, 1], 0).into());
    config.catalog.sync_interval = Interval(None);
    config.catalog.bucket = "fleet".to_owned();
    let upstream = milepost_api::server::upstream_settings(&config);
    let state = AppState::open_with_upstream(config, upstream).await?;
    let documents = state.catalog.search.doc_count();
    let token = milepost_api::auth::create_token(
        &state.db,
        &format!("bench-web-{}", chrono::Utc::now().timestamp_millis()),
        Role::Engineer,
    )
    .await?;
    let running = server::start_with_state(state).await?;
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let cookie = format!("{}={token}", milepost_ui::SESSION_COOKIE);
    let get = |path: String| {
        client
            .get(format!("{base}{path}"))
            .header("cookie", &cookie)
            .send()
    };

    println!(
        "bench_web: {documents} documents in {}, {rounds} rounds of {} queries",
        dir.display(),
        QUERIES.len()
    );
    let css = get("/assets/app.css".into()).await?.bytes().await?.len();
    let js = get("/assets/app.js".into()).await?.bytes().await?.len();

    // Warm-up, and a check that every page is a real result page.
    let mut weights = vec![0usize; QUERIES.len()];
    let mut totals = vec![String::new(); QUERIES.len()];
    for _ in 0..3 {
        for (i, (_, q)) in QUERIES.iter().enumerate() {
            let response = get(format!("/?{}", encode(q))).await?;
            let status = response.status();
            let html = response.text().await?;
            if !status.is_success() || !html.contains(r#"id="total-count""#) {
                bail!("query {q:?}: {status}: {}", &html[..html.len().min(400)]);
            }
            let start = html.find(r#"id="total-count">"#).map_or(0, |i| i + 17);
            totals[i] = html[start..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            weights[i] = html.len();
        }
    }
    let mut samples = vec![Vec::with_capacity(rounds); QUERIES.len()];
    for _ in 0..rounds {
        for (i, (_, q)) in QUERIES.iter().enumerate() {
            let t = Instant::now();
            let body = get(format!("/?{}", encode(q))).await?.bytes().await?;
            samples[i].push(t.elapsed());
            std::hint::black_box(body);
        }
    }
    running.shutdown().await?;

    println!("\n| query | matches | page KiB | p50 ms | p95 ms | p99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut all = Vec::new();
    let mut non_empty = Vec::new();
    for (i, (name, q)) in QUERIES.iter().enumerate() {
        let mut s = samples[i].clone();
        s.sort();
        all.extend(&s);
        if !q.is_empty() {
            non_empty.extend(&s);
        }
        println!(
            "| {name}: `{}` | {} | {:.1} | {} | {} | {} | {} |",
            if q.is_empty() { "(empty)" } else { q },
            totals[i],
            weights[i] as f64 / 1024.0,
            ms(percentile(&s, 50.0)),
            ms(percentile(&s, 95.0)),
            ms(percentile(&s, 99.0)),
            ms(s.last().copied().unwrap_or_default())
        );
    }
    for (label, mut s) in [
        ("all but the empty query", non_empty),
        ("**all page loads**", all),
    ] {
        s.sort();
        println!(
            "| {label} ({}) | | | {} | {} | {} | {} |",
            s.len(),
            ms(percentile(&s, 50.0)),
            ms(percentile(&s, 95.0)),
            ms(percentile(&s, 99.0)),
            ms(s.last().copied().unwrap_or_default())
        );
    }
    let heaviest = weights.iter().max().copied().unwrap_or(0);
    println!(
        "\npage weight: HTML {:.1} KiB (heaviest of the mix) + app.css {:.1} KiB + app.js {:.1} KiB = {:.1} KiB",
        heaviest as f64 / 1024.0,
        css as f64 / 1024.0,
        js as f64 / 1024.0,
        (heaviest + css + js) as f64 / 1024.0
    );
    Ok(())
}
