//! The benchmark report line, shared by the images that measure (host, guest) and the tool that
//! collects them (`cargo xtask bench`): `bench: <key> n=<n> median=<m> min=<a> max=<b>`.
//! Figures are retired instructions (PMU event 0x08 under QEMU `-icount shift=0`).

/// Statistics of one benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Samples.
    pub n: usize,
    /// Median (the lower middle for an even count).
    pub median: u64,
    /// Smallest sample.
    pub min: u64,
    /// Largest sample.
    pub max: u64,
}

impl Stats {
    /// Sorts `samples` and summarises them; `None` for no samples.
    pub fn from_samples(samples: &mut [u64]) -> Option<Self> {
        samples.sort_unstable();
        Some(Self { n: samples.len(), median: samples[(samples.len().checked_sub(1)?) / 2], min: samples[0], max: *samples.last()? })
    }

    /// Parses the part of a report line after `bench: <key> `.
    pub fn parse(fields: &str) -> Option<Self> {
        let mut v = [None; 4];
        for f in fields.split_whitespace() {
            let (k, n) = f.split_once('=')?;
            let i = ["n", "median", "min", "max"].iter().position(|x| *x == k)?;
            v[i] = Some(n.parse::<u64>().ok()?);
        }
        Some(Self { n: v[0]? as usize, median: v[1]?, min: v[2]?, max: v[3]? })
    }
}

impl core::fmt::Display for Stats {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "n={} median={} min={} max={}", self.n, self.median, self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn stats_and_their_line_round_trip() {
        let mut s = [9, 1, 5, 7, 3];
        let st = Stats::from_samples(&mut s).unwrap();
        assert_eq!(st, Stats { n: 5, median: 5, min: 1, max: 9 });
        assert_eq!(Stats::parse(&st.to_string()), Some(st));
        assert_eq!(Stats::from_samples(&mut []), None);
        assert_eq!(Stats::parse("n=1 median=2 min=3"), None);
        assert_eq!(Stats::parse("n=1 median=x min=3 max=4"), None);
    }
}
