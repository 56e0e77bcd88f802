//! IPMI 2.0 over LAN (RMCP+, "lanplus"), cipher suite 3: RAKP-HMAC-SHA1 authentication,
//! HMAC-SHA1-96 integrity, AES-CBC-128 confidentiality (IPMI v2.0 rev 1.1, section 13). The
//! session: Open Session, RAKP 1-4, Set Session Privilege Level (administrator), then the
//! commands, then Close Session.
//!
//! A one-time PXE boot: Set System Boot Options parameter 0 "set in progress" (0x80 "not
//! supported" and 0xCC tolerated, as many BMCs answer), parameter 3 so the BMC does not clear
//! the boot flags 60 s after they are set, parameter 5 (valid, once, EFI when UEFI, force PXE),
//! commit and "set complete"; then Chassis Control power cycle, or power up when off.
//!
//! Written here rather than taken from the `ipmi` crate: that crate's lanplus session drove
//! ipmi_sim only after the caller sent Set Session Privilege Level itself, offers no AES, and
//! we need every step's answer in words on the host's timeline.
use crate::{Credentials, Failure, Op, Outcome, Power, Trace};
use aes::cipher::{block_padding::NoPadding, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use ring::hmac;

/// One request datagram out, its answer back: the driver sends, times out and retransmits.
pub trait Datagram {
    /// Sends `packet` and returns the next datagram from the BMC that `wanted` accepts; `Err`
    /// when none came in time. A datagram `wanted` refuses (a late answer to an earlier,
    /// retransmitted request) is dropped and the driver keeps waiting.
    fn exchange(
        &mut self,
        packet: &[u8],
        wanted: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<Vec<u8>, Failure>;
}

/// For the session set-up messages: every answer is looked at.
fn any(_: &[u8]) -> bool {
    true
}

const RMCP: [u8; 4] = [0x06, 0x00, 0xff, 0x07];
const AUTH_RMCPP: u8 = 0x06;
const PT_IPMI: u8 = 0x00;
const PT_OPEN_REQ: u8 = 0x10;
const PT_OPEN_RSP: u8 = 0x11;
const PT_RAKP1: u8 = 0x12;
const PT_RAKP2: u8 = 0x13;
const PT_RAKP3: u8 = 0x14;
const PT_RAKP4: u8 = 0x15;
const ENCRYPTED: u8 = 0x80;
const AUTHENTICATED: u8 = 0x40;
/// Administrator: boot options and chassis control need it.
const ADMIN: u8 = 0x04;
/// RAKP 1's role byte: administrator, user looked up by name and privilege.
const ROLE: u8 = ADMIN;
const BMC_ADDR: u8 = 0x20;
const SW_ID: u8 = 0x81;
const NETFN_CHASSIS: u8 = 0x00;
const NETFN_APP: u8 = 0x06;

/// RMCP+ status codes (Open Session and RAKP answers) in words.
fn status_text(code: u8) -> &'static str {
    match code {
        0x01 => "insufficient resources to create a session",
        0x02 => "invalid session ID",
        0x03 => "invalid payload type",
        0x04 => "invalid authentication algorithm",
        0x05 => "invalid integrity algorithm",
        0x09 => "inactive session ID",
        0x0d => "unauthorized name (no such user)",
        0x0e => "unauthorized role or privilege level",
        0x0f => "invalid role",
        0x11 => "cipher suite 3 (AES-CBC-128, HMAC-SHA1) is not offered",
        0x12 => "invalid integrity check value (wrong password)",
        0x13 => "invalid confidentiality algorithm",
        _ => "see the IPMI specification's RMCP+ status codes",
    }
}

/// Completion codes in words.
fn completion_text(cc: u8) -> &'static str {
    match cc {
        0xc0 => "node busy",
        0xc1 => "invalid command",
        0xc3 => "timeout",
        0xc7 => "request data length invalid",
        0xc9 => "parameter out of range",
        0xcc => "invalid data field in request",
        0xd4 => "insufficient privilege level",
        0xd5 => "cannot execute in the current state",
        0x80 => "parameter not supported",
        0x81 => "attempt to set 'set in progress' while in progress",
        _ => "see the IPMI specification's completion codes",
    }
}

fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    let k = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let mut c = hmac::Context::with_key(&k);
    for p in parts {
        c.update(p);
    }
    let mut out = [0u8; 20];
    out.copy_from_slice(c.sign().as_ref());
    out
}

fn checksum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x)).wrapping_neg()
}

/// An IPMI request message (LAN format: responder, requester, checksums).
fn message(netfn: u8, cmd: u8, seq: u8, data: &[u8]) -> Vec<u8> {
    let mut m = vec![BMC_ADDR, netfn << 2];
    m.push(checksum(&m));
    let start = m.len();
    m.extend_from_slice(&[SW_ID, (seq & 0x3f) << 2, cmd]);
    m.extend_from_slice(data);
    m.push(checksum(&m[start..]));
    m
}

/// The keys of an established session.
struct Keys {
    /// Integrity (HMAC-SHA1-96).
    k1: [u8; 20],
    /// Confidentiality (the first 16 bytes: AES-128).
    k2: [u8; 20],
}

/// An unauthenticated RMCP+ packet (session setup).
fn setup_packet(payload_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = RMCP.to_vec();
    p.push(AUTH_RMCPP);
    p.push(payload_type);
    p.extend_from_slice(&[0; 8]); // session ID 0, sequence 0
    p.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    p.extend_from_slice(payload);
    p
}

/// Parses an RMCP+ packet's header: (payload type byte, session ID, payload, authenticated part).
fn parse(packet: &[u8]) -> Result<(u8, u32, &[u8]), Failure> {
    let bad = |w: &str| Failure::fatal(format!("malformed RMCP+ answer: {w}"));
    if packet.len() < 16 || packet[..4] != RMCP {
        return Err(bad("no RMCP header"));
    }
    if packet[4] != AUTH_RMCPP {
        return Err(bad("not an IPMI 2.0 session packet"));
    }
    let pt = packet[5];
    let sid = u32::from_le_bytes(packet[6..10].try_into().unwrap_or_default());
    let len = u16::from_le_bytes([packet[14], packet[15]]) as usize;
    let payload = packet
        .get(16..16 + len)
        .ok_or_else(|| bad("payload shorter than its length"))?;
    Ok((pt, sid, payload))
}

/// Checks and decrypts a session answer.
fn open(keys: &Keys, packet: &[u8]) -> Result<Vec<u8>, Failure> {
    let (pt, _sid, payload) = parse(packet)?;

    if pt & 0x3f != PT_IPMI {
        return Err(Failure::fatal(format!(
            "unexpected RMCP+ payload type {:#x}",
            pt & 0x3f
        )));
    }
    if pt & AUTHENTICATED == 0 || pt & ENCRYPTED == 0 {
        return Err(Failure::fatal(
            "the BMC answered outside the session's integrity and encryption",
        ));
    }
    if packet.len() < 12 {
        return Err(Failure::fatal("malformed RMCP+ answer: no integrity code"));
    }
    let (body, code) = packet.split_at(packet.len() - 12);
    let want = hmac_sha1(&keys.k1, &[&body[4..]]);
    if want[..12] != *code {
        return Err(Failure::fatal(
            "the BMC's answer failed its integrity check (another device answered, or the keys differ)",
        ));
    }
    if payload.len() < 32 || payload.len() % 16 != 0 {
        return Err(Failure::fatal("malformed encrypted payload"));
    }
    let key: [u8; 16] = keys.k2[..16].try_into().unwrap_or_default();
    let iv: [u8; 16] = payload[..16].try_into().unwrap_or_default();
    let plain = cbc::Decryptor::<aes::Aes128>::new(&key.into(), &iv.into())
        .decrypt_padded_vec_mut::<NoPadding>(&payload[16..])
        .map_err(|_| Failure::fatal("the encrypted payload does not decrypt"))?;
    let pad = *plain.last().unwrap_or(&0) as usize;
    if pad + 1 > plain.len() {
        return Err(Failure::fatal("bad confidentiality padding"));
    }
    Ok(plain[..plain.len() - pad - 1].to_vec())
}

struct Session<'a> {
    net: &'a mut dyn Datagram,
    trace: &'a mut Trace,
    keys: Keys,
    /// The BMC's session ID (what our packets carry).
    bmc_sid: u32,
    seq: u32,
    rq_seq: u8,
    random: &'a mut dyn FnMut(&mut [u8]),
}

impl Session<'_> {
    fn seal(&mut self, msg: &[u8]) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1).max(1);
        // Confidentiality: IV, then the message with pad bytes 1, 2, ... and the pad length.
        let mut iv = [0u8; 16];
        (self.random)(&mut iv);
        let mut plain = msg.to_vec();
        let pad = (16 - (msg.len() + 1) % 16) % 16;
        for i in 1..=pad {
            plain.push(i as u8);
        }
        plain.push(pad as u8);
        let key: [u8; 16] = self.keys.k2[..16].try_into().unwrap_or_default();
        let enc = cbc::Encryptor::<aes::Aes128>::new(&key.into(), &iv.into())
            .encrypt_padded_vec_mut::<NoPadding>(&plain);
        let mut payload = iv.to_vec();
        payload.extend_from_slice(&enc);
        let mut p = RMCP.to_vec();
        p.push(AUTH_RMCPP);
        p.push(PT_IPMI | ENCRYPTED | AUTHENTICATED);
        p.extend_from_slice(&self.bmc_sid.to_le_bytes());
        p.extend_from_slice(&self.seq.to_le_bytes());
        p.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        p.extend_from_slice(&payload);
        // Integrity pad so that auth type .. next header is a multiple of 4.
        let covered = p.len() - 4 + 2;
        let ipad = (4 - covered % 4) % 4;
        p.extend(std::iter::repeat_n(0xffu8, ipad));
        p.push(ipad as u8);
        p.push(0x07);
        let code = hmac_sha1(&self.keys.k1, &[&p[4..]]);
        p.extend_from_slice(&code[..12]);
        p
    }

    fn open(&self, packet: &[u8]) -> Result<Vec<u8>, Failure> {
        open(&self.keys, packet)
    }

    /// Sends a command; returns (completion code, data).
    fn command(
        &mut self,
        what: &str,
        netfn: u8,
        cmd: u8,
        data: &[u8],
    ) -> Result<(u8, Vec<u8>), Failure> {
        self.rq_seq = (self.rq_seq + 1) & 0x3f;
        let m = message(netfn, cmd, self.rq_seq, data);
        let packet = self.seal(&m);
        // Under load the driver may have retransmitted the previous request, and its second
        // answer arrives now: an authentic answer carrying another request's sequence number
        // is dropped, not taken for this one.
        let (keys, rq_seq) = (&self.keys, self.rq_seq);
        let mut wanted = |p: &[u8]| match open(keys, p) {
            Ok(r) if r.len() >= 8 => r[4] >> 2 == rq_seq,
            _ => true,
        };
        let answer = self.net.exchange(&packet, &mut wanted)?;
        let r = self.open(&answer)?;
        if r.len() < 8
            || checksum(&r[..2]) != r[2]
            || checksum(&r[3..r.len() - 1]) != r[r.len() - 1]
        {
            return Err(Failure::fatal(format!("{what}: malformed IPMI answer")));
        }
        if r[1] >> 2 != netfn + 1 || r[5] != cmd || r[4] >> 2 != self.rq_seq {
            return Err(Failure::fatal(format!(
                "{what}: the answer is for another request"
            )));
        }
        let cc = r[6];
        let out = r[7..r.len() - 1].to_vec();
        self.trace.step(if cc == 0 {
            format!("{what}: ok")
        } else {
            format!(
                "{what}: completion code {cc:#04x} ({})",
                completion_text(cc)
            )
        });
        Ok((cc, out))
    }

    fn must(&mut self, what: &str, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, Failure> {
        let (cc, out) = self.command(what, netfn, cmd, data)?;
        if cc != 0 {
            return Err(Failure::fatal(format!(
                "{what}: refused (completion code {cc:#04x}: {})",
                completion_text(cc)
            )));
        }
        Ok(out)
    }
}

/// Opens a session (Open Session, RAKP 1-4) and raises it to administrator.
fn establish<'a>(
    net: &'a mut dyn Datagram,
    cred: &Credentials,
    trace: &'a mut Trace,
    random: &'a mut dyn FnMut(&mut [u8]),
) -> Result<Session<'a>, Failure> {
    let name = cred.user.as_bytes();
    if name.len() > 16 {
        return Err(Failure::fatal("IPMI user names are at most 16 bytes"));
    }
    let secret = cred.secret.as_bytes();
    if secret.len() > 20 {
        return Err(Failure::fatal("IPMI 2.0 passwords are at most 20 bytes"));
    }
    let mut kuid = zeroize::Zeroizing::new([0u8; 20]);
    kuid[..secret.len()].copy_from_slice(secret);
    let mut our = [0u8; 4];
    random(&mut our);
    our[3] |= 0x01; // never zero
    let our_sid = u32::from_le_bytes(our);
    let tag = 0x01u8;

    // Open Session: cipher suite 3.
    let mut req = vec![tag, ADMIN, 0, 0];
    req.extend_from_slice(&our_sid.to_le_bytes());
    req.extend_from_slice(&[0x00, 0, 0, 0x08, 0x01, 0, 0, 0]); // RAKP-HMAC-SHA1
    req.extend_from_slice(&[0x01, 0, 0, 0x08, 0x01, 0, 0, 0]); // HMAC-SHA1-96
    req.extend_from_slice(&[0x02, 0, 0, 0x08, 0x01, 0, 0, 0]); // AES-CBC-128
    let a = net.exchange(&setup_packet(PT_OPEN_REQ, &req), &mut any)?;
    let (pt, _, p) = parse(&a)?;
    if pt & 0x3f != PT_OPEN_RSP || p.len() < 12 {
        return Err(Failure::fatal("Open Session: unexpected answer"));
    }
    if p[1] != 0 {
        trace.step(format!("Open Session: status {:#04x}", p[1]));
        return Err(Failure::fatal(format!(
            "Open Session refused ({})",
            status_text(p[1])
        )));
    }
    let bmc_sid = u32::from_le_bytes(p[8..12].try_into().unwrap_or_default());
    trace.step("Open Session: ok (cipher suite 3)");

    // RAKP 1.
    let mut rm = [0u8; 16];
    random(&mut rm);
    let mut r1 = vec![tag, 0, 0, 0];
    r1.extend_from_slice(&bmc_sid.to_le_bytes());
    r1.extend_from_slice(&rm);
    r1.extend_from_slice(&[ROLE, 0, 0, name.len() as u8]);
    r1.extend_from_slice(name);
    let a = net.exchange(&setup_packet(PT_RAKP1, &r1), &mut any)?;
    let (pt, _, p) = parse(&a)?;
    if pt & 0x3f != PT_RAKP2 || p.len() < 2 {
        return Err(Failure::fatal("RAKP 1: unexpected answer"));
    }
    if p[1] != 0 {
        trace.step(format!("RAKP 2: status {:#04x}", p[1]));
        return Err(Failure::fatal(format!(
            "IPMI login refused ({})",
            status_text(p[1])
        )));
    }
    if p.len() < 60 {
        return Err(Failure::fatal("RAKP 2: too short"));
    }
    let rc: [u8; 16] = p[8..24].try_into().unwrap_or_default();
    let guid: [u8; 16] = p[24..40].try_into().unwrap_or_default();
    let len = [name.len() as u8];
    let want = hmac_sha1(
        &kuid[..],
        &[
            &our_sid.to_le_bytes(),
            &bmc_sid.to_le_bytes(),
            &rm,
            &rc,
            &guid,
            &[ROLE],
            &len,
            name,
        ],
    );
    if want != p[40..60] {
        trace.step("RAKP 2: the BMC's key exchange code does not match");
        return Err(Failure::fatal("IPMI login refused (wrong password)"));
    }
    let sik = hmac_sha1(&kuid[..], &[&rm, &rc, &[ROLE], &len, name]);
    let keys = Keys {
        k1: hmac_sha1(&sik, &[&[1u8; 20]]),
        k2: hmac_sha1(&sik, &[&[2u8; 20]]),
    };

    // RAKP 3.
    let code = hmac_sha1(
        &kuid[..],
        &[&rc, &our_sid.to_le_bytes(), &[ROLE], &len, name],
    );
    let mut r3 = vec![tag, 0, 0, 0];
    r3.extend_from_slice(&bmc_sid.to_le_bytes());
    r3.extend_from_slice(&code);
    let a = net.exchange(&setup_packet(PT_RAKP3, &r3), &mut any)?;
    let (pt, _, p) = parse(&a)?;
    if pt & 0x3f != PT_RAKP4 || p.len() < 2 {
        return Err(Failure::fatal("RAKP 3: unexpected answer"));
    }
    if p[1] != 0 {
        trace.step(format!("RAKP 4: status {:#04x}", p[1]));
        return Err(Failure::fatal(format!(
            "IPMI login refused ({})",
            status_text(p[1])
        )));
    }
    let icv = hmac_sha1(&sik, &[&rm, &bmc_sid.to_le_bytes(), &guid]);
    if p.len() < 20 || p[8..20] != icv[..12] {
        return Err(Failure::fatal(
            "RAKP 4: the BMC's integrity check value does not match",
        ));
    }
    trace.step("RAKP: authenticated");
    let mut s = Session {
        net,
        trace,
        keys,
        bmc_sid,
        seq: 0,
        rq_seq: 0,
        random,
    };
    s.must(
        "Set Session Privilege Level (administrator)",
        NETFN_APP,
        0x3b,
        &[ADMIN],
    )?;
    Ok(s)
}

/// Set System Boot Options for a one-time boot: `device` is the boot device selector (0x04
/// PXE), or `None` to clear the flags (the machine boots its own order).
fn set_boot(s: &mut Session<'_>, device: Option<u8>, uefi: bool) -> Result<(), Failure> {
    let tolerate = |cc: u8| cc == 0 || cc == 0x80 || cc == 0xcc;
    let (cc, _) = s.command(
        "Set System Boot Options: set in progress",
        NETFN_CHASSIS,
        0x08,
        &[0x00, 0x01],
    )?;
    // 0x81 "already in progress": our own retransmitted request whose first answer was lost
    // and which the BMC executed twice, or a set another session left open; the flags written
    // next are ours either way, and "set complete" closes it.
    if !tolerate(cc) && cc != 0x81 {
        return Err(Failure::fatal(format!(
            "Set System Boot Options (set in progress): refused ({cc:#04x}: {})",
            completion_text(cc)
        )));
    }
    // Keep the flags past the 60 s the BMC would otherwise give the next chassis command
    // (a BMC without this parameter answers 0x80 or 0xCC; the reset follows at once anyway).
    let (cc, _) = s.command(
        "Set System Boot Options: keep the flags past 60 s",
        NETFN_CHASSIS,
        0x08,
        &[0x03, 0x10],
    )?;
    if !tolerate(cc) {
        return Err(Failure::fatal(format!(
            "Set System Boot Options (flag clearing): refused ({cc:#04x}: {})",
            completion_text(cc)
        )));
    }
    let flags = match device {
        Some(d) => [0x05, 0x80 | if uefi { 0x20 } else { 0 }, d, 0, 0, 0],
        None => [0x05, 0, 0, 0, 0, 0],
    };
    s.must(
        match device {
            Some(0x04) => "Set System Boot Options: boot flags (once, force PXE)",
            _ => "Set System Boot Options: boot flags cleared",
        },
        NETFN_CHASSIS,
        0x08,
        &flags,
    )?;
    for (what, v) in [("commit", 0x02u8), ("set complete", 0x00)] {
        let (cc, _) = s.command(
            &format!("Set System Boot Options: {what}"),
            NETFN_CHASSIS,
            0x08,
            &[0x00, v],
        )?;
        if !tolerate(cc) {
            return Err(Failure::fatal(format!(
                "Set System Boot Options ({what}): refused ({cc:#04x}: {})",
                completion_text(cc)
            )));
        }
    }
    Ok(())
}

/// Runs `op` against the BMC behind `net`. `random` fills buffers with random bytes (session
/// IDs, RAKP randoms, IVs).
pub fn run(
    net: &mut dyn Datagram,
    cred: &Credentials,
    uefi: bool,
    op: Op,
    trace: &mut Trace,
    random: &mut dyn FnMut(&mut [u8]),
) -> Result<Outcome, Failure> {
    let mut s = establish(net, cred, trace, random)?;
    let result = (|| {
        let st = s.must("Get Chassis Status", NETFN_CHASSIS, 0x01, &[])?;
        let power = match st.first() {
            Some(b) if b & 1 == 1 => Power::On,
            Some(_) => Power::Off,
            None => return Err(Failure::fatal("Get Chassis Status: empty answer")),
        };
        let mut o = Outcome {
            power: Some(power.clone()),
            can_netboot: None,
            summary: String::new(),
        };
        let (ctl, did) = match power {
            Power::On => (0x02, "power cycled"),
            _ => (0x01, "powered up"),
        };
        match op {
            Op::Status => {
                o.summary = format!("IPMI: power {power}; boot flags can be set (force PXE)");
                return Ok(o);
            }
            Op::NetbootOnce => set_boot(&mut s, Some(0x04), uefi)?,
            Op::BootDisk => set_boot(&mut s, None, uefi)?,
            Op::PowerCycle => {}
        }
        let (cc, _) = s.command(
            &format!("Chassis Control ({did})"),
            NETFN_CHASSIS,
            0x02,
            &[ctl],
        )?;
        let did = match cc {
            0 => did,
            // Many BMCs (ipmi_sim among them) offer no power cycle: a hard reset instead.
            0xcc if ctl == 0x02 => {
                s.must("Chassis Control (hard reset)", NETFN_CHASSIS, 0x02, &[0x03])?;
                "reset (hard reset; the BMC offers no power cycle)"
            }
            cc => {
                return Err(Failure::fatal(format!(
                    "Chassis Control ({did}): refused (completion code {cc:#04x}: {})",
                    completion_text(cc)
                )))
            }
        };
        o.summary = match op {
            Op::NetbootOnce => format!("IPMI: one-time PXE boot set, {did}"),
            Op::BootDisk => format!("IPMI: boot flags cleared (disk), {did}"),
            _ => format!("IPMI: {did}"),
        };
        Ok(o)
    })();
    // Close Session whatever happened (a lost answer here changes nothing).
    let sid = s.bmc_sid.to_le_bytes();
    if s.command("Close Session", NETFN_APP, 0x3c, &sid).is_err() {
        s.trace
            .step("Close Session: no answer (the BMC times the session out)");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_checksums_make_each_part_sum_to_zero() {
        let m = message(NETFN_CHASSIS, 0x08, 5, &[0x05, 0xa0, 0x04, 0, 0, 0]);
        assert_eq!(m[..3].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(m[3..].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(m[4], 5 << 2);
    }

    /// A BMC on the other side of the trait: computes RAKP as the specification says and
    /// answers commands, so the session's crypto is checked both ways.
    struct Bmc {
        password: &'static [u8],
        seen: Vec<(u8, Vec<u8>)>,
        keys: Option<Keys>,
        state: (u32, [u8; 16], [u8; 16], Vec<u8>),
        power_on: bool,
        /// Each answer arrives twice (as after a retransmission): the copy comes before the
        /// next request's answer.
        replay: bool,
        late: Option<Vec<u8>>,
    }

    impl Datagram for Bmc {
        fn exchange(
            &mut self,
            packet: &[u8],
            wanted: &mut dyn FnMut(&[u8]) -> bool,
        ) -> Result<Vec<u8>, Failure> {
            let a = self.answer(packet)?;
            // The late second answer to the previous request comes first, when told to.
            if let Some(late) = self.late.take() {
                assert!(!wanted(&late), "a stale answer was accepted");
            }
            let session = parse(packet).is_ok_and(|(pt, _, _)| pt & 0x3f == PT_IPMI);
            if self.replay && session {
                self.late = Some(a.clone());
            }
            assert!(wanted(&a));
            Ok(a)
        }
    }

    impl Bmc {
        fn answer(&mut self, packet: &[u8]) -> Result<Vec<u8>, Failure> {
            let (pt, _, p) = parse(packet)?;
            let mut kuid = [0u8; 20];
            kuid[..self.password.len()].copy_from_slice(self.password);
            let guid = [7u8; 16];
            let bmc_sid = 0x0a0b0c0du32;
            match pt & 0x3f {
                PT_OPEN_REQ => {
                    self.state.0 = u32::from_le_bytes(p[4..8].try_into().unwrap());
                    let mut r = vec![p[0], 0, ADMIN, 0];
                    r.extend_from_slice(&p[4..8]);
                    r.extend_from_slice(&bmc_sid.to_le_bytes());
                    r.extend_from_slice(&p[8..32]);
                    Ok(setup_packet(PT_OPEN_RSP, &r))
                }
                PT_RAKP1 => {
                    self.state.1 = p[8..24].try_into().unwrap();
                    self.state.2 = [9u8; 16];
                    let n = p[27] as usize;
                    self.state.3 = p[28..28 + n].to_vec();
                    let code = hmac_sha1(
                        &kuid,
                        &[
                            &self.state.0.to_le_bytes(),
                            &bmc_sid.to_le_bytes(),
                            &self.state.1,
                            &self.state.2,
                            &guid,
                            &[p[24]],
                            &[p[27]],
                            &self.state.3,
                        ],
                    );
                    let mut r = vec![p[0], 0, 0, 0];
                    r.extend_from_slice(&self.state.0.to_le_bytes());
                    r.extend_from_slice(&self.state.2);
                    r.extend_from_slice(&guid);
                    r.extend_from_slice(&code);
                    Ok(setup_packet(PT_RAKP2, &r))
                }
                PT_RAKP3 => {
                    let name = self.state.3.clone();
                    let want = hmac_sha1(
                        &kuid,
                        &[
                            &self.state.2,
                            &self.state.0.to_le_bytes(),
                            &[ROLE],
                            &[name.len() as u8],
                            &name,
                        ],
                    );
                    if want != p[8..28] {
                        let mut r = vec![p[0], 0x0f, 0, 0];
                        r.extend_from_slice(&self.state.0.to_le_bytes());
                        return Ok(setup_packet(PT_RAKP4, &r));
                    }
                    let sik = hmac_sha1(
                        &kuid,
                        &[
                            &self.state.1,
                            &self.state.2,
                            &[ROLE],
                            &[name.len() as u8],
                            &name,
                        ],
                    );
                    self.keys = Some(Keys {
                        k1: hmac_sha1(&sik, &[&[1u8; 20]]),
                        k2: hmac_sha1(&sik, &[&[2u8; 20]]),
                    });
                    let icv = hmac_sha1(&sik, &[&self.state.1, &bmc_sid.to_le_bytes(), &guid]);
                    let mut r = vec![p[0], 0, 0, 0];
                    r.extend_from_slice(&self.state.0.to_le_bytes());
                    r.extend_from_slice(&icv[..12]);
                    Ok(setup_packet(PT_RAKP4, &r))
                }
                _ => {
                    // A session command: open it with the same code the client uses, answer.
                    let keys = self.keys.as_ref().unwrap();
                    let iv = || [3u8; 16];
                    let mut rnd = |b: &mut [u8]| b.copy_from_slice(&iv()[..b.len()]);
                    let mut trace = Trace::default();
                    let mut null = NoNet;
                    let mut s = Session {
                        net: &mut null,
                        trace: &mut trace,
                        keys: Keys {
                            k1: keys.k1,
                            k2: keys.k2,
                        },
                        bmc_sid: self.state.0,
                        seq: 0,
                        rq_seq: 0,
                        random: &mut rnd,
                    };
                    let m = s.open(packet)?;
                    let (netfn, seq, cmd, data) =
                        (m[1] >> 2, m[4], m[5], m[6..m.len() - 1].to_vec());
                    self.seen.push((cmd, data.clone()));
                    let out: Vec<u8> = match (netfn, cmd) {
                        (NETFN_APP, 0x3b) => vec![0, ADMIN],
                        (NETFN_CHASSIS, 0x01) => vec![0, u8::from(self.power_on), 0, 0],
                        (NETFN_CHASSIS, 0x08) if data == [0x00, 0x02] => vec![0x80],
                        (NETFN_CHASSIS, 0x08) if data[0] == 0x03 => vec![0xcc],
                        (NETFN_CHASSIS, 0x02) if data == [0x02] => vec![0xcc],
                        _ => vec![0],
                    };
                    let mut r = vec![SW_ID, (netfn + 1) << 2];
                    r.push(checksum(&r));
                    let st = r.len();
                    r.extend_from_slice(&[BMC_ADDR, seq, cmd]);
                    r.extend_from_slice(&out);
                    r.push(checksum(&r[st..]));
                    Ok(s.seal(&r))
                }
            }
        }
    }

    struct NoNet;
    impl Datagram for NoNet {
        fn exchange(
            &mut self,
            _: &[u8],
            _: &mut dyn FnMut(&[u8]) -> bool,
        ) -> Result<Vec<u8>, Failure> {
            Err(Failure::transient("no network"))
        }
    }

    fn cred(pw: &str) -> Credentials {
        Credentials {
            user: "admin".into(),
            secret: zeroize::Zeroizing::new(pw.into()),
        }
    }

    #[test]
    fn a_session_sets_the_pxe_flags_once_and_cycles_the_power() {
        for replay in [false, true] {
            session_sets_the_pxe_flags(replay);
        }
    }

    /// `replay`: every answer is also delivered again before the next one, as when the driver
    /// retransmitted a request whose first answer was only late (seen against ipmi_sim under
    /// load: "the answer is for another request").
    fn session_sets_the_pxe_flags(replay: bool) {
        let mut bmc = Bmc {
            password: b"secret",
            seen: vec![],
            keys: None,
            state: (0, [0; 16], [0; 16], vec![]),
            power_on: true,
            replay,
            late: None,
        };
        let mut n = 0u8;
        let mut rnd = |b: &mut [u8]| {
            for x in b.iter_mut() {
                n = n.wrapping_add(37);
                *x = n;
            }
        };
        let mut t = Trace::default();
        let o = run(
            &mut bmc,
            &cred("secret"),
            true,
            Op::NetbootOnce,
            &mut t,
            &mut rnd,
        )
        .unwrap();
        assert_eq!(
            o.summary,
            "IPMI: one-time PXE boot set, reset (hard reset; the BMC offers no power cycle)"
        );
        let cmds: Vec<(u8, Vec<u8>)> = bmc.seen.clone();
        assert_eq!(cmds[0], (0x3b, vec![ADMIN]));
        assert_eq!(cmds[2], (0x08, vec![0x00, 0x01]));
        assert_eq!(cmds[3], (0x08, vec![0x03, 0x10]));
        assert_eq!(cmds[4], (0x08, vec![0x05, 0xa0, 0x04, 0, 0, 0]));
        assert_eq!(cmds[7], (0x02, vec![0x02]));
        assert_eq!(cmds[8], (0x02, vec![0x03]));
        assert_eq!(cmds[9].0, 0x3c);
        // The unsupported commit (0x80) was tolerated and said so.
        assert!(
            t.0.iter()
                .any(|l| l.contains("commit: completion code 0x80")),
            "{t:?}"
        );
    }

    #[test]
    fn a_wrong_password_is_named() {
        let mut bmc = Bmc {
            password: b"secret",
            seen: vec![],
            keys: None,
            state: (0, [0; 16], [0; 16], vec![]),
            power_on: false,
            replay: false,
            late: None,
        };
        let mut rnd = |b: &mut [u8]| b.fill(1);
        let e = run(
            &mut bmc,
            &cred("wrong"),
            false,
            Op::Status,
            &mut Trace::default(),
            &mut rnd,
        )
        .unwrap_err();
        assert!(e.message.contains("wrong password"), "{e}");
    }
}
