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

/// One phase's times: the sum over all its calls, the median call and the calls at the
/// 95th and 99th percentiles (nearest rank), in seconds. The median is what to compare
/// on a shared machine: a step the scheduler interrupted moves the sum but hardly the
/// median. The percentiles show how often a call runs long, and by how much.
#[derive(Clone, Copy, Debug)]
pub struct PhaseTime {
    pub name: &'static str,
    pub total: f64,
    pub median: f64,
    pub p95: f64,
    pub p99: f64,
}

impl PhaseTime {
    /// The sum, median and percentiles of one phase's `secs`.
    fn of(name: &'static str, mut secs: Vec<f64>) -> Self {
        secs.sort_by(f64::total_cmp);
        // Nearest rank: the smallest sample with at least `fraction` of them at or below.
        let at = |fraction: f64| {
            let rank = (secs.len() as f64 * fraction).ceil() as usize;
            secs.get(rank.saturating_sub(1)).copied().unwrap_or(0.0)
        };
        PhaseTime {
            name,
            total: secs.iter().sum(),
            median: secs.get(secs.len() / 2).copied().unwrap_or(0.0),
            p95: at(0.95),
            p99: at(0.99),
        }
    }
}

impl PhaseClock {
    /// Starts timing (clearing earlier samples).
    pub fn start(&mut self) {
        self.running = Some((Instant::now(), Vec::new()));
    }

    /// Stops timing; returns each phase's sum, median and percentiles.
    pub fn stop(&mut self) -> Vec<PhaseTime> {
        let samples = self.running.take().map(|r| r.1).unwrap_or_default();
        samples
            .into_iter()
            .map(|(name, secs)| PhaseTime::of(name, secs))
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

    /// 200 calls of 1 to 200 µs, shuffled: the median is the 101st, the 95th percentile
    /// the 190th and the 99th the 198th; no calls give zeros.
    #[test]
    fn percentiles_are_nearest_rank() {
        let us = |n: usize| n as f64 * 1e-6;
        let secs: Vec<f64> = (0..200).map(|i| us((i * 77) % 200 + 1)).collect();
        let time = PhaseTime::of("a", secs);
        assert_eq!(
            (time.median, time.p95, time.p99),
            (us(101), us(190), us(198))
        );
        assert!((time.total - 20_100e-6).abs() < 1e-12);
        let none = PhaseTime::of("b", Vec::new());
        assert_eq!(
            (none.total, none.median, none.p95, none.p99),
            (0.0, 0.0, 0.0, 0.0)
        );
    }
}
