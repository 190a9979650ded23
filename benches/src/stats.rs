//! Percentiles, medians and ratios: the arithmetic of the report.

/// The `pct`th percentile of `sorted` (ascending) by nearest rank: the smallest value
/// such that at least `pct`% of the samples are at or below it, i.e. the element at
/// 1-based rank `ceil(pct * n / 100)`. Integer arithmetic, so p99 of 20,000 samples is
/// exactly the 19,800th. `None` for no samples or `pct` outside 1..=100.
pub fn percentile<T: Copy>(sorted: &[T], pct: u32) -> Option<T> {
    if sorted.is_empty() || pct == 0 || pct > 100 {
        return None;
    }
    let n = sorted.len() as u64;
    let rank = (u64::from(pct) * n).div_ceil(100).max(1);
    usize::try_from(rank - 1)
        .ok()
        .and_then(|i| sorted.get(i).copied())
}

/// The median of `values` (any order; NaNs are left out): the middle value, or the
/// mean of the two middle values for an even count. `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// `value / baseline`, or `None` when the baseline is zero or either is not finite.
pub fn ratio(value: f64, baseline: f64) -> Option<f64> {
    if baseline == 0.0 || !baseline.is_finite() || !value.is_finite() {
        return None;
    }
    Some(value / baseline)
}

/// Nanoseconds to microseconds.
pub fn ns_to_us(ns: u64) -> f64 {
    ns as f64 / 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let one_to_hundred: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&one_to_hundred, 50), Some(50));
        assert_eq!(percentile(&one_to_hundred, 99), Some(99));
        assert_eq!(percentile(&one_to_hundred, 100), Some(100));
        assert_eq!(percentile(&one_to_hundred, 1), Some(1));

        // 20,000 samples: p50 is the 10,000th, p99 the 19,800th (no float rounding).
        let many: Vec<u64> = (1..=20_000).collect();
        assert_eq!(percentile(&many, 50), Some(10_000));
        assert_eq!(percentile(&many, 99), Some(19_800));

        // Small counts round the rank up.
        assert_eq!(percentile(&[10, 20, 30], 50), Some(20));
        assert_eq!(percentile(&[10, 20, 30, 40], 50), Some(20));
        assert_eq!(percentile(&[10, 20, 30, 40], 99), Some(40));
        assert_eq!(percentile(&[7], 99), Some(7));

        assert_eq!(percentile::<u64>(&[], 50), None);
        assert_eq!(percentile(&[1], 0), None);
        assert_eq!(percentile(&[1], 101), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0, 8.0]), Some(5.0));
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(5.0, 10.0), Some(0.5));
        assert_eq!(ratio(5.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
        assert_eq!(ratio(1.0, f64::INFINITY), None);
        assert_eq!(ns_to_us(56_500), 56.5);
    }
}
