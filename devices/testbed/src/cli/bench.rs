//! `testbed bench BENCHMARK`: the benchmarks' options and their handler.

use super::*;

#[derive(Subcommand)]
pub enum Bench {
    /// The seed's applications (Table 1): maglev, nitrosketch, mica and logmon on both
    /// NICs, with the Ensō/packetized ratio per app. Build it with `--release`.
    Apps {
        /// Where the apps run (native only).
        #[arg(long, value_enum, default_value = "native")]
        transport: AppsTransport,
        /// Frames per app and NIC.
        #[arg(long, allow_negative_numbers = true, default_value_t = 200_000,
              value_parser = whole::<u64>(1, u64::MAX))]
        frames: u64,
        /// Frames in flight at most (1..=1048576).
        #[arg(long, allow_negative_numbers = true, default_value_t = 256,
              value_parser = whole::<usize>(1, MAX_WINDOW))]
        window: usize,
        /// Rounds (1..=100): each runs every app on both NICs, the NIC order reversing
        /// every other round; medians and spreads (min, max) are reported.
        #[arg(long, allow_negative_numbers = true, default_value_t = 3, value_parser = whole::<u32>(1, 100))]
        runs: u32,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Also write an SVG bar chart.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// The Ensō echo: Mpps, Gbps, driver ns per packet, and the raw ring ceiling.
    Echo {
        /// Where the driver runs.
        #[arg(long, value_enum, default_value = "native")]
        transport: Transport,
        /// Accelerator for `--transport vm`.
        #[arg(long, value_enum, default_value = "auto")]
        accel: AccelChoice,
        /// Frame sizes in bytes, comma-separated (each 60..=9000).
        #[arg(long, allow_negative_numbers = true, value_delimiter = ',', default_value = "64,1500",
              value_parser = whole::<usize>(MIN_FRAME, MAX_FRAME))]
        sizes: Vec<usize>,
        /// Packets per run.
        #[arg(long, allow_negative_numbers = true, default_value_t = 2_000_000,
              value_parser = whole::<u64>(1, u64::MAX))]
        packets: u64,
        /// Runs per size; the median is reported.
        #[arg(long, allow_negative_numbers = true, default_value_t = 5,
              value_parser = whole::<usize>(1, u64::MAX))]
        runs: usize,
        /// Pipes (Ensō) or RSS queues (packetized) the echo uses; one per driver core, as in
        /// the seed's single-core echo (1..=64; the packetized NIC has 8 queue pairs).
        #[arg(long, allow_negative_numbers = true, default_value_t = 1,
              value_parser = whole::<u32>(1, ENSO_PIPES))]
        pipes: u32,
        /// Flows (1..=65536).
        #[arg(long, allow_negative_numbers = true, default_value_t = 16,
              value_parser = whole::<u32>(1, MAX_FLOWS))]
        flows: u32,
        /// NIC models, comma-separated; with both, ratios are reported.
        #[arg(long, value_delimiter = ',', default_value = "enso,packetized")]
        nic: Vec<NicKind>,
        /// Ensō notification modes, comma-separated: one result row each (the packetized
        /// NIC runs once). Ratios use the reactive row. `--transport vm` runs reactive only.
        #[arg(long, value_delimiter = ',', default_value = "reactive")]
        notify: Vec<Notify>,
        /// Pipes the Ensō NIC serves, comma-separated (each --pipes..=8192): one result
        /// row each, e.g. 64,8192 to show the polling cost does not grow with them.
        #[arg(long, allow_negative_numbers = true, value_delimiter = ',', default_value = "8192",
              value_parser = whole::<u32>(1, MAX_SERVED_PIPES))]
        served_pipes: Vec<u32>,
        /// Latency model: packets per arrival burst (1..=4096).
        #[arg(long, allow_negative_numbers = true, default_value_t = 32,
              value_parser = whole::<usize>(1, MODEL_MAX_BATCH))]
        model_batch: usize,
        /// Latency model: software cost per batch (ns, 0..=1e9), on top of the measured
        /// driver ns/packet per packet.
        #[arg(long, allow_negative_numbers = true, default_value_t = 100.0, value_parser = model_ns)]
        model_sw_batch_ns: f64,
        /// Latency model: poll interval of an idle driver (ns, 0..=1e9; 0 notices at once).
        #[arg(long, allow_negative_numbers = true, default_value_t = 100.0, value_parser = model_ns)]
        model_poll_ns: f64,
        /// Latency model: offered load (Mpps, 0.001..=10000); default the reactive Ensō
        /// row's measured rate.
        #[arg(long, allow_negative_numbers = true, value_parser = model_mpps)]
        model_mpps: Option<f64>,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Also write an SVG plot (throughput and metadata fraction vs frame size).
        #[arg(long)]
        plot: Option<PathBuf>,
    },
}

/// A benchmark's report with its verdict: `pass`, and `error` when the run went well but
/// writing the plot did not.
#[derive(Serialize)]
pub struct Judged<'a, T: Serialize> {
    #[serde(flatten)]
    pub report: &'a T,
    pub pass: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Writes the plot (if asked); returns what went wrong.
pub fn write_plot(plot: Option<&Path>, svg: impl FnOnce() -> String) -> Option<String> {
    let path = plot?;
    match std::fs::write(path, svg()) {
        Ok(()) => {
            eprintln!("[testbed] bench: plot written to {}", path.display());
            None
        }
        Err(e) => {
            let e = format!("cannot write {}: {e}", path.display());
            eprintln!("error: {e}");
            Some(e)
        }
    }
}

/// Runs benchmark `b` and prints its report (one JSON object with `json`).
pub fn handle(b: Bench, json: bool) -> Result<ExitCode> {
    match b {
        Bench::Apps { transport: AppsTransport::Native, frames, window, runs, plot, .. } => {
            let r = crate::scenarios::apps::bench(frames, window, runs as usize)?;
            let plot_error = write_plot(plot.as_deref(), || crate::scenarios::apps::plot_bench(&r));
            // Failed runs and failed checks, then the plot.
            let error = match (r.failure(), plot_error) {
                (Some(f), Some(p)) => Some(format!("{f}; {p}")),
                (f, p) => f.or(p),
            };
            let pass = error.is_none() && r.results.iter().all(|x| x.correct);
            let line = serde_json::to_string(&Judged { report: &r, pass, error })?;
            Ok(finish(json, &crate::scenarios::apps::render_bench(&r), &line, pass))
        }
        Bench::Echo {
            transport,
            accel,
            sizes,
            packets,
            runs,
            pipes,
            flows,
            nic,
            notify,
            served_pipes,
            model_batch,
            model_sw_batch_ns,
            model_poll_ns,
            model_mpps,
            plot,
            ..
        } => {
            let o = crate::bench::BenchOptions {
                sizes,
                packets,
                runs,
                pipes,
                flows,
                nics: nic,
                notify,
                served_pipes,
                model: crate::bench::ModelOptions {
                    batch: model_batch,
                    sw_batch_ns: model_sw_batch_ns,
                    poll_ns: model_poll_ns,
                    offered_mpps: model_mpps,
                },
            };
            let env = provision(transport, accel)?;
            let vm = env.as_ref().map(|env| crate::bench::VmBench {
                env,
                options: run::RunOptions { timeout: Duration::from_secs(600), keep: false, console: false },
            });
            let r = crate::bench::echo(&o, vm.as_ref())?;
            let plot_error = write_plot(plot.as_deref(), || crate::bench::plot(&r));
            // Failed runs and lossy rows, then the plot.
            let error = match (r.failure(), plot_error) {
                (Some(f), Some(p)) => Some(format!("{f}; {p}")),
                (f, p) => f.or(p),
            };
            let pass = error.is_none() && r.results.iter().all(|x| x.all_matched);
            let line = serde_json::to_string(&Judged { report: &r, pass, error })?;
            Ok(finish(json, &crate::bench::render(&r), &line, pass))
        }
    }
}
