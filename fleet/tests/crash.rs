//! Crash safety of the sled store: a child process records host updates and events, flushing
//! before it acknowledges each one on stdout, and is killed with SIGKILL at a random moment. On
//! reopen every acknowledged write must be there and the store must be consistent and writable.
//! Looped 60 times with different kill points.
use fleet::{Event, EventSource, HostRecord, HostState, Mac, SledStore, Store};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "UNBRICK_CRASH_CHILD_DIR";
const HOSTS: u64 = 8;

fn mac(i: u64) -> Mac {
    Mac([0x52, 0x54, 0x00, 0xc0, 0x00, (i % HOSTS) as u8])
}

/// The writer. As a normal test it does nothing; re-executed with CHILD_ENV it writes forever.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = SledStore::open(dir.as_ref()).expect("child opens the store");
    let start: u64 = std::env::var("UNBRICK_CRASH_START")
        .unwrap()
        .parse()
        .unwrap();
    let mut out = std::io::stdout().lock();
    for i in start.. {
        let m = mac(i);
        let ev = |part: &str| Event {
            time_ms: i,
            source: EventSource::Agent,
            kind: "step".into(),
            message: format!("{i} {part}{}", "x".repeat((i % 300) as usize)),
        };
        if i % 5 == 0 {
            // The report's way: the record and two timeline entries in one atomic write.
            let mut h = store
                .host(m)
                .unwrap()
                .unwrap_or_else(|| HostRecord::new(m, i));
            h.payload_boots = (i / HOSTS) as u32 + 1;
            h.notes = format!("atomic {i}");
            if h.state == HostState::Unknown {
                h.state = HostState::Seen;
            }
            store.put_host_with_events(&h, &[ev("a"), ev("b")]).unwrap();
        } else {
            store
                .update_host(m, i, &mut |h| {
                    h.payload_boots = (i / HOSTS) as u32 + 1;
                    h.notes = format!("write {i}");
                    if h.state == HostState::Unknown {
                        h.state = HostState::Seen;
                    }
                    Ok(())
                })
                .unwrap();
            store.append_event(m, &ev("")).unwrap();
        }
        // Every third write is acknowledged on its own; the others in pairs, as the server's
        // group commit does.
        if i % 3 != 1 {
            store.flush().unwrap();
            use std::io::Write;
            writeln!(out, "ack {i}").unwrap();
            out.flush().unwrap();
        }
    }
}

/// A small deterministic PRNG (the kill points differ per round but the test is reproducible).
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn every_acknowledged_write_survives_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("unbrick-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let exe = std::env::current_exe().unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut acked_total: Vec<u64> = Vec::new();
    let mut next_write = 0u64;
    for round in 0..60 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .env("UNBRICK_CRASH_START", next_write.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill after a random number of acknowledgements (0..40), or at a random time.
        let want = next(&mut seed) % 40;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = 0;
        while got < want && Instant::now() < deadline {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(n) = l.strip_prefix("ack ") {
                        acked_total.push(n.parse().unwrap());
                        got += 1;
                    }
                }
                _ => break,
            }
        }
        if want.is_multiple_of(4) {
            std::thread::sleep(Duration::from_micros(next(&mut seed) % 3000));
        }
        child.kill().unwrap(); // SIGKILL
                               // Acknowledgements already on the pipe count too: they were flushed first.
        for l in lines.map_while(Result::ok) {
            if let Some(n) = l.strip_prefix("ack ") {
                acked_total.push(n.parse().unwrap());
            }
        }
        child.wait().unwrap();

        let store = SledStore::open(&dir)
            .unwrap_or_else(|e| panic!("round {round}: store does not reopen: {e}"));
        let mut highest = 0;
        for h in 0..HOSTS {
            let m = mac(h);
            let events = store
                .events(m)
                .unwrap_or_else(|e| panic!("round {round}: events of {m} corrupt: {e}"));
            let seen: std::collections::HashSet<u64> = events
                .iter()
                .map(|e| e.message.split(' ').next().unwrap().parse().unwrap())
                .collect();
            let rec: Option<HostRecord> = store.host(m).unwrap();
            for &a in acked_total.iter().filter(|a| mac(**a) == m) {
                assert!(
                    seen.contains(&a),
                    "round {round}: acknowledged event {a} of {m} lost"
                );
                let rec = rec.as_ref().expect("host of an acknowledged write");
                assert!(
                    rec.payload_boots as u64 > a / HOSTS,
                    "round {round}: acknowledged host update {a} of {m} lost"
                );
            }
            // Events of one host keep their order.
            let order: Vec<u64> = events
                .iter()
                .map(|e| e.message.split(' ').next().unwrap().parse().unwrap())
                .collect();
            assert!(
                order.windows(2).all(|w| w[0] <= w[1]),
                "round {round}: events of {m} out of order"
            );
            // An atomic write is whole: both its events or neither, and a record that shows
            // it has them.
            for &i in order.iter().filter(|i| *i % 5 == 0) {
                let n = order.iter().filter(|j| **j == i).count();
                assert_eq!(n, 2, "round {round}: atomic write {i} of {m} is in part");
            }
            if let Some(i) = rec
                .as_ref()
                .and_then(|r| r.notes.strip_prefix("atomic "))
                .map(|i| i.parse::<u64>().unwrap())
            {
                assert!(
                    seen.contains(&i),
                    "round {round}: record of atomic write {i} of {m} without its events"
                );
            }
            highest = highest.max(order.last().copied().unwrap_or(0));
        }
        // Still writable after the crash.
        store.flush().unwrap();
        drop(store);
        next_write = highest + 1;
    }
    assert!(
        acked_total.len() > 300,
        "the child acknowledged only {} writes in 60 rounds",
        acked_total.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
