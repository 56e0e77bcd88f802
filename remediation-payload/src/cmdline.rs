//! The kernel command line the boot script gives the agent.
use crate::Error;

/// What to do with a volume Windows did not unmount cleanly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirtyPolicy {
    /// Mount a volume marked dirty with ntfs3's `force` and report it (the default: the machine
    /// is boot-looping, Windows never got to run chkdsk, and the files we touch are few).
    Force,
    /// Leave dirty volumes alone and report them as needing attention.
    Skip,
}

/// What the boot script put on the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// `unbrick.server`: the HTTP base of the server.
    pub server: String,
    /// `https://ip:port` of the agent API (`unbrick.api=`).
    pub api: Option<String>,
    /// `unbrick.token`: the per-boot token.
    pub token: String,
    /// `unbrick.mac`: the NIC to use.
    pub mac: Option<String>,
    /// `unbrick.poweroff`: power off instead of rebooting (tests, the demo).
    pub poweroff: bool,
    /// `unbrick.dirty`: force or skip.
    pub dirty: DirtyPolicy,
    /// `unbrick.keywait=SECONDS`: how long the agent waits for an admin to paste a BitLocker
    /// recovery key that was not escrowed (default one hour), polling every 5 s.
    pub key_wait_secs: u64,
}

impl Cmdline {
    /// Parses `/proc/cmdline`; the server and the token are required.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut server = None;
        let mut api = None;
        let mut token = None;
        let mut mac = None;
        let mut poweroff = false;
        let mut dirty = DirtyPolicy::Force;
        let mut key_wait_secs = 3600;
        for word in text.split_whitespace() {
            let (k, v) = word.split_once('=').unwrap_or((word, ""));
            match k {
                "unbrick.server" => server = Some(v.trim_end_matches('/').to_string()),
                "unbrick.api" => api = Some(v.trim_end_matches('/').to_string()),
                "unbrick.token" => token = Some(v.to_string()),
                "unbrick.mac" => mac = Some(v.to_ascii_lowercase()),
                "unbrick.poweroff" => poweroff = true,
                "unbrick.keywait" => {
                    key_wait_secs = v.parse().map_err(|_| {
                        Error::Cmdline(format!("unbrick.keywait={v}: expected seconds"))
                    })?
                }
                "unbrick.dirty" => {
                    dirty = match v {
                        "skip" => DirtyPolicy::Skip,
                        _ => DirtyPolicy::Force,
                    }
                }
                _ => {}
            }
        }
        let server = server.ok_or_else(|| Error::Cmdline("the kernel command line has no unbrick.server=; this machine was not booted by unbrick".into()))?;
        if !server.starts_with("http://") && !server.starts_with("https://") {
            return Err(Error::Cmdline(format!(
                "unbrick.server={server} is not an http:// URL"
            )));
        }
        if let Some(a) = &api {
            if !a.starts_with("https://") {
                return Err(Error::Cmdline(format!(
                    "unbrick.api={a} is not an https:// URL"
                )));
            }
        }
        let token = token.ok_or_else(|| {
            Error::Cmdline("the kernel command line has no unbrick.token=".into())
        })?;
        Ok(Self {
            server,
            api,
            token,
            mac,
            poweroff,
            dirty,
            key_wait_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parse() {
        let c = Cmdline::parse("BOOT_IMAGE=/vmlinuz initrd=initrd.img unbrick.server=http://10.99.0.1:8080 unbrick.token=abc unbrick.mac=52:54:00:AA:BB:CC console=ttyS0 unbrick.poweroff unbrick.dirty=skip").unwrap();
        assert_eq!(c.server, "http://10.99.0.1:8080");
        assert_eq!(c.token, "abc");
        assert_eq!(c.mac.as_deref(), Some("52:54:00:aa:bb:cc"));
        assert!(c.poweroff);
        assert_eq!(c.dirty, DirtyPolicy::Skip);
        assert!(Cmdline::parse("quiet")
            .unwrap_err()
            .to_string()
            .contains("unbrick.server"));
        assert!(Cmdline::parse("unbrick.server=ftp://x unbrick.token=t").is_err());
        // The unsigned command line chooses no mode: restore comes from the server's hello
        // reply over the pinned channel (a word naming one is ignored).
        assert!(
            Cmdline::parse("unbrick.server=http://a unbrick.token=t unbrick.mode=restore").is_ok()
        );
        let c = Cmdline::parse("unbrick.server=http://10.99.0.1:8080 unbrick.api=https://10.99.0.1:8443/ unbrick.token=t").unwrap();
        assert_eq!(c.api.as_deref(), Some("https://10.99.0.1:8443"));
        assert!(Cmdline::parse(
            "unbrick.server=http://a unbrick.api=http://10.99.0.1:8443 unbrick.token=t"
        )
        .unwrap_err()
        .to_string()
        .contains("https"));
    }
}
