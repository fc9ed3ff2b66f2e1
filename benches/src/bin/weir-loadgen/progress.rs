//! A progress bar on stderr while the load runs (hidden when stderr is not a terminal): readings answered out of
//! `--count`, or time out of `--duration`, with the acknowledged rate and errors so far.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::Args;
use crate::send::Counters;

const REFRESH: Duration = Duration::from_millis(200);

pub struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(args: &Args, counters: Arc<Counters>) -> Self {
        let by_time = args.count().is_none();
        let (len, template) = match args.count() {
            Some(n) => (n, "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} readings, eta {eta}  {msg}"),
            None => (
                args.duration.unwrap_or_default().as_millis() as u64,
                "{elapsed_precise} [{wide_bar}] {percent}% of the duration  {msg}",
            ),
        };
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        bar.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
        let ticker = tokio::spawn(tick(bar.clone(), counters, by_time));
        Progress { bar, ticker }
    }

    pub fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

async fn tick(bar: ProgressBar, counters: Arc<Counters>, by_time: bool) {
    let started = Instant::now();
    let mut interval = tokio::time::interval(REFRESH);
    loop {
        interval.tick().await;
        let acked = counters.acked.load(Ordering::Relaxed);
        let position =
            if by_time { started.elapsed().as_millis() as u64 } else { counters.answered.load(Ordering::Relaxed) };
        bar.set_position(position);
        let rate = acked as f64 / started.elapsed().as_secs_f64().max(1e-3);
        let errors = counters.errors.load(Ordering::Relaxed);
        bar.set_message(format!("{acked} acked, {rate:.0}/s, {errors} failed requests"));
    }
}
