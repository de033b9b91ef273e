//! An open-loop load generator for the benchmark: sends POSTs at a fixed
//! rate (latency measured from each request's scheduled time, so a slow
//! server cannot hide its queueing) and reports latency and time-to-first-byte
//! percentiles in microseconds, one `key=value` line.
//!
//! `sluice-loadgen <url> <body-file> <rate/s> <seconds> [bearer]`
//! A rate of 0 means closed-loop with one connection (sequential), used by
//! the instruction-count guard.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

struct Stats {
    total: Histogram<u64>,
    ttfb: Histogram<u64>,
    ok: u64,
    failed: u64,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable_hist()))
}

fn unreachable_hist() -> Histogram<u64> {
    // new(3) cannot fail for a valid precision; keep clippy's no-panic rule.
    std::process::exit(2)
}

async fn one(
    client: &reqwest::Client,
    url: &str,
    body: &bytes::Bytes,
    bearer: &str,
    start: Instant,
    stats: &Mutex<Stats>,
) {
    let mut rb = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.clone());
    if !bearer.is_empty() {
        rb = rb.bearer_auth(bearer);
    }
    let result = async {
        let mut resp = rb.send().await?;
        let ok = resp.status().is_success();
        let mut first = None;
        while let Some(_chunk) = resp.chunk().await? {
            if first.is_none() {
                first = Some(start.elapsed());
            }
        }
        Ok::<_, reqwest::Error>((ok, first))
    }
    .await;
    let total = start.elapsed();
    let mut s = stats.lock();
    match result {
        Ok((true, first)) => {
            s.ok += 1;
            let _ = s.total.record(total.as_micros().max(1) as u64);
            let _ = s
                .ttfb
                .record(first.unwrap_or(total).as_micros().max(1) as u64);
        }
        _ => s.failed += 1,
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: sluice-loadgen <url> <body-file> <rate/s> <seconds> [bearer]");
        return std::process::ExitCode::FAILURE;
    }
    let url = args[1].clone();
    let body = match std::fs::read(&args[2]) {
        Ok(b) => bytes::Bytes::from(b),
        Err(e) => {
            eprintln!("sluice-loadgen: {}: {e}", args[2]);
            return std::process::ExitCode::FAILURE;
        }
    };
    let rate: u64 = args[3].parse().unwrap_or(1000);
    let secs: f64 = args[4].parse().unwrap_or(10.0);
    let bearer = args.get(5).cloned().unwrap_or_default();
    let client = match reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice-loadgen: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let stats = Arc::new(Mutex::new(Stats {
        total: hist(),
        ttfb: hist(),
        ok: 0,
        failed: 0,
    }));
    let began = Instant::now();
    let end = began + Duration::from_secs_f64(secs);
    if rate == 0 {
        let n = secs as u64;
        for _ in 0..n {
            one(&client, &url, &body, &bearer, Instant::now(), &stats).await;
        }
    } else {
        // Pacing runs on its own OS thread: tokio's timer has a 1 ms
        // granularity, which released requests in bursts (two at a time at
        // 2 000/s) up to 1 ms after their scheduled time, and that lag was
        // measured as latency. A thread's sleep wakes within tens of µs.
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let (tick_tx, mut ticks) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let pacer = std::thread::spawn(move || {
            let mut next = began;
            while next < end {
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
                if tick_tx.send(next).is_err() {
                    break;
                }
                next += interval;
            }
        });
        let mut tasks = tokio::task::JoinSet::new();
        while let Some(scheduled) = ticks.recv().await {
            let (client, url, body, bearer, stats) = (
                client.clone(),
                url.clone(),
                body.clone(),
                bearer.clone(),
                stats.clone(),
            );
            tasks.spawn(async move { one(&client, &url, &body, &bearer, scheduled, &stats).await });
            while tasks.try_join_next().is_some() {}
        }
        let _ = pacer.join();
        while tasks.join_next().await.is_some() {}
    }
    let elapsed = began.elapsed().as_secs_f64();
    let s = stats.lock();
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
    println!(
        "ok={} failed={} rps={:.0} p50_us={} p99_us={} p999_us={} ttfb_p50_us={} ttfb_p99_us={}",
        s.ok,
        s.failed,
        s.ok as f64 / elapsed,
        q(&s.total, 0.5),
        q(&s.total, 0.99),
        q(&s.total, 0.999),
        q(&s.ttfb, 0.5),
        q(&s.ttfb, 0.99),
    );
    std::process::ExitCode::SUCCESS
}
