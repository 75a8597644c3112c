//! Unit tests of the job state and page tokens.
use super::*;

fn ev(seq: i64, kind: EventType) -> JobEvent {
    JobEvent {
        job_id: "j".into(),
        r#type: kind as i32,
        seq,
        timestamp: 1,
        ..Default::default()
    }
}

#[test]
fn apply_moves_the_status_and_keeps_stored_events() {
    let cfg = JobConfig {
        max_events: 2,
        ..Default::default()
    };
    let mut st = JobState::new(JobRecord::default());
    apply(&cfg, &mut st, ev(1, EventType::Start));
    assert_eq!(st.record.status, JobStatus::Running);
    apply(&cfg, &mut st, ev(2, EventType::Log));
    apply(&cfg, &mut st, ev(3, EventType::Log));
    // Nothing is stored yet, so nothing may be dropped.
    assert_eq!(st.events.len(), 3);
    st.persisted_seq = 3;
    apply(&cfg, &mut st, ev(4, EventType::Done));
    assert_eq!(
        st.events.len(),
        2,
        "count retention applies to stored events"
    );
    assert_eq!(st.record.first_seq, 3);
    assert_eq!(st.record.status, JobStatus::Completed);
    assert_eq!(st.record.last_seq, 4);
    assert_eq!(st.index_of(4), 1);
}

#[test]
fn page_tokens_round_trip() {
    assert_eq!(parse_token("12.abc").unwrap(), (12, "abc".to_string()));
    assert!(parse_token("nonsense").is_err());
}
