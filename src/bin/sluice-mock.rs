//! The mock upstream as a process, for the benchmark: `sluice-mock [addr]`.
//! Same behaviours as the tests' mock (see `sluice::mock`); recording is off.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18081".into());
    let Ok(addr) = addr.parse() else {
        eprintln!("usage: sluice-mock [ip:port]");
        return std::process::ExitCode::FAILURE;
    };
    match sluice::mock::start(addr, true).await {
        Ok(m) => {
            println!("mock upstream on http://{}", m.addr);
            let _ = tokio::signal::ctrl_c().await;
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice-mock: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
