//! Progress bars for long commands (`unbrick image build`): each stage is a line on stdout (so
//! logs and scripts see it) and, on a terminal, a spinner or a bar on stderr while it runs.
//! indicatif draws nothing when stderr is not a terminal.
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

#[derive(Default)]
pub(crate) struct Bars {
    bar: Option<ProgressBar>,
    counting: bool,
}

impl Bars {
    /// A stage begins: the previous one's bar ends.
    pub(crate) fn stage(&mut self, what: &str) {
        self.finish();
        println!("{what}");
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.set_message(what.to_string());
        b.enable_steady_tick(Duration::from_millis(120));
        self.bar = Some(b);
        self.counting = false;
    }

    /// A remark inside the stage, above its bar.
    pub(crate) fn note(&mut self, what: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| println!("      {what}")),
            None => println!("      {what}"),
        }
    }

    /// How far the stage is.
    pub(crate) fn count(&mut self, done: u64, total: u64, bytes: bool) {
        let Some(b) = &self.bar else { return };
        if !self.counting {
            let t = if bytes {
                "{msg} [{bar:30}] {bytes}/{total_bytes} {elapsed}"
            } else {
                "{msg} [{bar:30}] {pos}/{len} {elapsed}"
            };
            b.set_style(
                ProgressStyle::with_template(t)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            self.counting = true;
        }
        b.set_length(total);
        b.set_position(done);
    }

    /// The last stage ends.
    pub(crate) fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    /// The builder's report, drawn here.
    pub(crate) fn build_report(&mut self, p: payload_builder::build::Progress<'_>) {
        use payload_builder::build::Progress;
        match p {
            Progress::Stage(s) => self.stage(s),
            Progress::Note(s) => self.note(s),
            Progress::Count { done, total, bytes } => self.count(done, total, bytes),
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.finish();
    }
}
