//! Where a CPU training step's time goes: a wall clock read at each phase boundary of
//! [`super::CpuBackend`]'s step, summed per phase (`cargo bench --bench kernels -- step`
//! prints it beside each adapter's dispatch-by-dispatch step profile).
//!
//! Off (the normal case) it costs one branch per phase; on, one `Instant::now()` per
//! phase (about 20 ns, under 0.1% of the smallest phase measured here) and one stored
//! sample.

use web_time::Instant;

/// Wall time per named phase, one sample per call, in the order the phases first ran.
#[derive(Default)]
pub struct PhaseClock {
    /// The last mark and each phase's samples, while timing.
    running: Option<(Instant, Vec<PhaseSamples>)>,
}

/// A phase's name and the seconds of each of its calls.
type PhaseSamples = (&'static str, Vec<f64>);

/// One phase's times: the sum over all its calls and the median call, in seconds. The
/// median is what to compare on a shared machine: a step the scheduler interrupted
/// moves the sum but hardly the median.
#[derive(Clone, Copy, Debug)]
pub struct PhaseTime {
    pub name: &'static str,
    pub total: f64,
    pub median: f64,
}

impl PhaseClock {
    /// Starts timing (clearing earlier samples).
    pub fn start(&mut self) {
        self.running = Some((Instant::now(), Vec::new()));
    }

    /// Stops timing; returns each phase's sum and median.
    pub fn stop(&mut self) -> Vec<PhaseTime> {
        let samples = self.running.take().map(|r| r.1).unwrap_or_default();
        samples
            .into_iter()
            .map(|(name, mut secs)| {
                secs.sort_by(f64::total_cmp);
                PhaseTime {
                    name,
                    total: secs.iter().sum(),
                    median: secs.get(secs.len() / 2).copied().unwrap_or(0.0),
                }
            })
            .collect()
    }

    /// Restarts the clock without charging the time since the last mark to any phase.
    #[inline]
    pub fn skip(&mut self) {
        if let Some((last, _)) = &mut self.running {
            *last = Instant::now();
        }
    }

    /// Charges the time since the last mark to `phase` (one sample).
    #[inline]
    pub fn mark(&mut self, phase: &'static str) {
        if let Some((last, samples)) = &mut self.running {
            let now = Instant::now();
            let secs = (now - *last).as_secs_f64();
            *last = now;
            match samples.iter_mut().find(|(name, _)| *name == phase) {
                Some((_, list)) => list.push(secs),
                None => samples.push((phase, vec![secs])),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_per_phase_in_first_seen_order_and_is_inert_when_off() {
        let mut clock = PhaseClock::default();
        clock.mark("ignored");
        assert!(clock.stop().is_empty());
        clock.start();
        clock.mark("a");
        clock.mark("b");
        clock.mark("a");
        let times = clock.stop();
        let names: Vec<_> = times.iter().map(|t| t.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(times.iter().all(|t| t.median >= 0.0 && t.total >= t.median));
        assert!(clock.stop().is_empty());
    }
}
