//! Times as HTTP writes them: the `Date` header (made once a second, shared by every
//! connection) and the access log's `[10/Oct/2000:13:55:36 +0000]`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use parking_lot::RwLock;

/// The `Date` header for now: formatted at most once a second.
pub(crate) fn header() -> HeaderValue {
    static SECOND: AtomicU64 = AtomicU64::new(u64::MAX);
    static VALUE: RwLock<Option<HeaderValue>> = RwLock::new(None);
    let secs = coarse_unix_secs();
    if SECOND.load(Ordering::Acquire) == secs
        && let Some(v) = VALUE.read().as_ref()
    {
        return v.clone();
    }
    let now = UNIX_EPOCH + Duration::from_secs(secs);
    let v = HeaderValue::from_str(&httpdate::fmt_http_date(now))
        .expect("an HTTP date is a valid header value");
    *VALUE.write() = Some(v.clone());
    SECOND.store(secs, Ordering::Release);
    v
}

/// The seconds since the Unix epoch from the kernel's coarse wall clock: a load of what the
/// kernel updates every tick (1 to 4 ms), without the hardware clock read of
/// `SystemTime::now` that every response would otherwise pay. A header of whole seconds
/// needs no more.
fn coarse_unix_secs() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_REALTIME_COARSE exists on every
    // Linux kernel greenhub supports.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } != 0 {
        return SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
    }
    u64::try_from(ts.tv_sec).unwrap_or(0)
}

/// Common Log Format's time, in UTC: `10/Oct/2000:13:55:36 +0000`.
pub(crate) fn common_log(at: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn common_log_time_agrees_with_httpdate() {
        for secs in [0u64, 951_782_400, 971_186_136, 1_709_251_199, 4_102_444_800] {
            let at = UNIX_EPOCH + Duration::from_secs(secs);
            let clf = common_log(at);
            // httpdate: "Tue, 10 Oct 2000 13:55:36 GMT"
            let http = httpdate::fmt_http_date(at);
            let parts: Vec<&str> = http.split(' ').collect();
            let want = format!("{}/{}/{}:{} +0000", parts[1], parts[2], parts[3], parts[4]);
            assert_eq!(clf, want);
        }
        assert_eq!(header().to_str().unwrap().len(), 29);
    }

    #[test]
    fn the_date_header_is_the_wall_clock_to_the_second() {
        for _ in 0..5 {
            let before = SystemTime::now();
            let value = header();
            let after = SystemTime::now();
            let at = httpdate::parse_http_date(value.to_str().unwrap()).unwrap();
            // Whole seconds, and the coarse clock may lag the precise one by a tick.
            let floor = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
            let secs = floor(at);
            assert!(
                secs + 1 >= floor(before) && secs <= floor(after),
                "{value:?} outside {before:?}..{after:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}
