use chrono::{NaiveDate, NaiveDateTime};
use proptest::prelude::*;

use super::*;

const MIB: u64 = 1 << 20;

fn parse(text: &str) -> Schedule {
    Schedule::parse(text).unwrap_or_else(|err| panic!("{text:?} should parse: {err}"))
}

fn error(text: &str) -> String {
    match Schedule::parse(text) {
        Ok(schedule) => panic!("{text:?} should not parse, got {schedule}"),
        Err(err) => err.to_string(),
    }
}

/// 2026-11-23 is a Monday; `day` 0 = Monday .. 6 = Sunday.
fn at(day: u32, hour: u32, minute: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, 23 + day)
        .and_then(|d| d.and_hms_opt(hour, minute, 0))
        .expect("valid time")
}

#[test]
fn the_issue_example_evaluates_as_documented() {
    let s = parse("Mon-Fri 09:00-18:00 20MiB; Sat,Sun 10MiB; * off");
    assert_eq!(s.rate_at(at(0, 9, 0)), Some(20 * MIB));
    assert_eq!(s.rate_at(at(4, 17, 59)), Some(20 * MIB));
    assert_eq!(s.rate_at(at(4, 18, 0)), None, "the end is exclusive");
    assert_eq!(s.rate_at(at(2, 8, 59)), None);
    assert_eq!(s.rate_at(at(5, 3, 0)), Some(10 * MIB));
    assert_eq!(s.rate_at(at(6, 23, 59)), Some(10 * MIB));
    assert_eq!(
        s.to_string(),
        "Mon-Fri 09:00-18:00 20MiB; Sat,Sun 10MiB; * off"
    );
}

#[test]
fn first_matching_rule_wins_and_no_match_is_unlimited() {
    let s = parse("* 12:00-13:00 off; Mon-Fri 1MiB");
    assert_eq!(s.rate_at(at(0, 12, 30)), None, "lunch is unlimited");
    assert_eq!(s.rate_at(at(0, 11, 0)), Some(MIB));
    assert_eq!(s.rate_at(at(5, 11, 0)), None, "no rule for the weekend");
}

#[test]
fn windows_wrapping_midnight_belong_to_their_start_day() {
    let s = parse("Fri 22:00-06:00 5MiB");
    assert!(s.rules()[0].window().expect("window").wraps());
    assert_eq!(s.rate_at(at(4, 21, 59)), None);
    assert_eq!(s.rate_at(at(4, 22, 0)), Some(5 * MIB));
    assert_eq!(s.rate_at(at(5, 5, 59)), Some(5 * MIB), "Saturday morning");
    assert_eq!(s.rate_at(at(5, 6, 0)), None);
    assert_eq!(
        s.rate_at(at(4, 5, 0)),
        None,
        "Friday morning is Thursday night's"
    );
    let sunday = parse("Sun 23:00-01:00 1MiB");
    assert_eq!(sunday.rate_at(at(0, 0, 30)), Some(MIB), "wraps into Monday");
}

#[test]
fn days_ranges_lists_and_case() {
    assert_eq!(parse("mon-WED 1MiB").to_string(), "Mon-Wed 1MiB");
    assert_eq!(parse("Sat,Sun 1MiB").to_string(), "Sat,Sun 1MiB");
    assert_eq!(parse("Mon,Tue,Wed 1MiB").to_string(), "Mon-Wed 1MiB");
    assert_eq!(
        parse("Fri-Mon 1MiB").to_string(),
        "Mon,Fri-Sun 1MiB",
        "wraps the week"
    );
    assert_eq!(parse("Mon-Sun 1MiB").to_string(), "* 1MiB");
    assert_eq!(parse("Mon-Tue,Thu 1MiB").to_string(), "Mon,Tue,Thu 1MiB");
    let s = parse("Fri-Mon 1MiB");
    assert_eq!(s.rate_at(at(0, 1, 0)), Some(MIB));
    assert_eq!(s.rate_at(at(1, 1, 0)), None);
}

#[test]
fn rates_accept_units_fractions_bytes_and_per_second() {
    let rate = |text: &str| parse(&format!("* {text}")).rules()[0].rate();
    assert_eq!(rate("20MiB"), Some(20 * MIB));
    assert_eq!(rate("512KiB"), Some(512 << 10));
    assert_eq!(rate("1.5GiB"), Some(3 << 29));
    assert_eq!(rate("1000000"), Some(1_000_000));
    assert_eq!(rate("10MB"), Some(10_000_000));
    assert_eq!(rate("20MiB/s"), Some(20 * MIB));
    assert_eq!(rate("OFF"), None);
    assert_eq!(parse("* 1.5GiB").to_string(), "* 1536MiB");
    assert_eq!(parse("* 10MB").to_string(), "* 10000000B");
}

#[test]
fn whole_day_windows_and_trailing_semicolons_are_normalised() {
    assert_eq!(parse("Mon 00:00-24:00 1MiB").to_string(), "Mon 1MiB");
    assert_eq!(
        parse("Mon 18:00-00:00 1MiB;").to_string(),
        "Mon 18:00-24:00 1MiB"
    );
    assert_eq!(
        parse("  Mon   9:00-18:00   1MiB  ").to_string(),
        "Mon 09:00-18:00 1MiB"
    );
}

#[test]
fn errors_name_the_rule_the_token_and_the_expectation() {
    let err = error("Mon-Fri 09:00-18:00 20MiB; Sat,Sun 10XB; * off");
    assert!(
        err.starts_with("schedule rule 2 `Sat,Sun 10XB`: unexpected `10XB`, expected a rate"),
        "{err}"
    );
    let err = error("Mon-Fry 20MiB");
    assert!(
        err.contains("rule 1") && err.contains("`Mon-Fry`") && err.contains("expected days"),
        "{err}"
    );
    let err = error("Mon 09:00-18:00");
    assert!(err.contains("ends early, expected a rate"), "{err}");
    let err = error("Mon 25:00-26:00 1MiB");
    assert!(
        err.contains("`25:00-26:00`") && err.contains("00:00 to 24:00"),
        "{err}"
    );
    let err = error("Mon 10:00-10:00 1MiB");
    assert!(err.contains("omit the window"), "{err}");
    let err = error("Mon 9-18 1MiB");
    assert!(
        err.contains("`9-18`") && err.contains("expected a rate"),
        "{err}"
    );
    let err = error("Mon 09:00 1MiB");
    assert!(
        err.contains("`09:00`") && err.contains("time window"),
        "{err}"
    );
    let err = error("* 0");
    assert!(err.contains("above zero"), "{err}");
    let err = error("* 1MiB 2MiB");
    assert!(
        err.contains("`2MiB`") && err.contains("separate rules with `;`"),
        "{err}"
    );
    let err = error("");
    assert!(
        err.contains("rule 1") && err.contains("ends early, expected days"),
        "{err}"
    );
    let err = error("* off;; Mon 1MiB");
    assert!(err.contains("rule 2"), "{err}");
    let err = error("20MiB");
    assert!(
        err.contains("`20MiB`") && err.contains("expected days"),
        "{err}"
    );
}

#[test]
fn next_change_finds_the_next_boundary_with_another_rate() {
    let s = parse("Mon-Fri 09:00-18:00 20MiB; Sat,Sun 10MiB; * off");
    assert_eq!(s.next_change_after(at(0, 8, 30)), Some(at(0, 9, 0)));
    assert_eq!(s.next_change_after(at(0, 9, 0)), Some(at(0, 18, 0)));
    assert_eq!(s.next_change_after(at(4, 20, 0)), Some(at(5, 0, 0)));
    assert_eq!(
        s.next_change_after(at(5, 12, 0)),
        Some(at(0, 0, 0) + Duration::days(7))
    );
    // Boundaries where the rate stays the same are skipped.
    let same = parse("Mon 1MiB; Tue 1MiB; * off");
    assert_eq!(same.next_change_after(at(0, 1, 0)), Some(at(2, 0, 0)));
    assert_eq!(parse("* 1MiB").next_change_after(at(3, 3, 3)), None);
    assert_eq!(parse("* off").next_change_after(at(3, 3, 3)), None);
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    let days = (1u8..=0x7f).prop_map(Days);
    let window = prop_oneof![
        Just(None),
        (0u32..1440, 1u32..=1440)
            .prop_filter("not empty, not the whole day", |(s, e)| s != e
                && !(*s == 0 && *e == 1440))
            .prop_map(|(start, end)| Some(Window { start, end })),
    ];
    let rate = prop_oneof![
        Just(None),
        (1u64..1 << 42).prop_map(Some),
        (1u64..4096).prop_map(|n| Some(n << 20)),
    ];
    (days, window, rate).prop_map(|(days, window, rate)| Rule { days, window, rate })
}

fn arb_schedule() -> impl Strategy<Value = Schedule> {
    prop::collection::vec(arb_rule(), 1..6).prop_map(|rules| Schedule { rules })
}

fn arb_time() -> impl Strategy<Value = NaiveDateTime> {
    (0u32..7, 0u32..24, 0u32..60, 0u32..60)
        .prop_map(|(d, h, m, s)| at(d, h, m) + Duration::seconds(i64::from(s)))
}

proptest! {
    #[test]
    fn display_parses_back_to_the_same_schedule(schedule in arb_schedule()) {
        let text = schedule.to_string();
        prop_assert_eq!(Schedule::parse(&text), Ok(schedule), "{}", text);
    }

    #[test]
    fn parsing_any_text_never_panics_and_is_canonical_once_parsed(text in "[ -~]{0,60}") {
        if let Ok(schedule) = Schedule::parse(&text) {
            let canonical = schedule.to_string();
            prop_assert_eq!(Schedule::parse(&canonical).map(|s| s.to_string()), Ok(canonical));
        }
    }

    #[test]
    fn rate_is_the_first_matching_rule(schedule in arb_schedule(), time in arb_time()) {
        let day = time.weekday().num_days_from_monday();
        let minute = time.hour() * 60 + time.minute();
        // Reference: expand each rule into the set of (day, minute) it covers.
        let covers = |rule: &Rule| match rule.window {
            None => rule.days.contains(day),
            Some(w) if w.start < w.end => rule.days.contains(day) && w.start <= minute && minute < w.end,
            Some(w) => (rule.days.contains(day) && minute >= w.start)
                || (rule.days.contains((day + 6) % 7) && minute < w.end),
        };
        let expected = schedule.rules.iter().find(|r| covers(r)).and_then(|r| r.rate);
        prop_assert_eq!(schedule.rate_at(time), expected);
    }

    #[test]
    fn next_change_is_the_first_minute_with_another_rate(
        schedule in arb_schedule(),
        time in arb_time(),
    ) {
        let current = schedule.rate_at(time);
        let next = schedule.next_change_after(time);
        // Walk minute by minute for a week and a day.
        let start = time.with_second(0).expect("second 0");
        let walked = (1..=8 * 1440)
            .map(|m| start + Duration::minutes(m))
            .find(|t| schedule.rate_at(*t) != current);
        prop_assert_eq!(next, walked);
    }
}
