//! `demu-bench`: trapped-access round trips and 2D throughput on the simulated host, with
//! 1..N vGPUs, against the hypervisor-only access and memset/memcpy in the same run.

use std::io::Write;

use clap::Parser;

/// Options.
#[derive(Debug, Parser)]
#[command(name = "demu-bench", about = "Benchmark demu on the simulated host")]
struct Options {
    /// Seconds per figure.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// vGPU counts to run, comma-separated.
    #[arg(long, default_value = "1,2,4,8", value_delimiter = ',')]
    vgpus: Vec<usize>,
}

fn main() -> std::process::ExitCode {
    let options = Options::parse();
    xen_backend::main_with("demu-bench", async move {
        let mut out = std::io::stdout();
        let mut print = |line: String| {
            writeln!(out, "{line}")
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write the results: {e}"))
        };
        print(demu::bench::header())?;
        for n in options.vgpus {
            let row = demu::bench::measure(n.max(1), options.seconds.max(0.1)).await?;
            print(row.line())?;
        }
        Ok(())
    })
}
