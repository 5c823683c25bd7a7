//! Egress control: the only outbound traffic is to destinations an
//! operator allows (`[webhooks] allow`), checked when an endpoint is saved
//! and again on every delivery, after DNS resolution, on the very address
//! the connection then goes to.
//!
//! - An origin entry (`https://siem.corp.example:8443`) allows that
//!   scheme, host and port, whatever ordinary address the name resolves to.
//! - A CIDR entry (`10.0.0.0/8`, `2001:db8::/32`) allows any port on those
//!   addresses (HTTPS; plain HTTP only with `allow_http`).
//! - Loopback, link-local (cloud metadata among them), unspecified,
//!   multicast and broadcast addresses are refused unless a CIDR entry
//!   contains the address, or an origin entry names that very address:
//!   a name that resolves to one is refused whatever its origin entry says.
//! - Plain `http://` only where an `http://` origin entry names the
//!   destination, or with `allow_http = true`.

use std::net::{IpAddr, SocketAddr};

/// URL scheme of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Https => 443,
            Scheme::Http => 80,
        }
    }
}

/// Longest destination URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// A parsed destination URL: `scheme://host[:port][/path][?query]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub scheme: Scheme,
    /// Lowercase name, or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Destination {
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.len() > MAX_URL_LEN || url.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            return Err(format!(
                "a URL is at most {MAX_URL_LEN} printable ASCII characters without spaces"
            ));
        }
        let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
            (Scheme::Https, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (Scheme::Http, r)
        } else {
            return Err("the URL must start with https:// (or http://)".into());
        };
        if url.contains('#') {
            return Err("the URL must not have a fragment".into());
        }
        let cut = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(cut);
        let path = if path.is_empty() {
            "/".to_owned()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        if authority.contains('@') {
            return Err("the URL must not carry credentials".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, tail) = v6.split_once(']').ok_or("unclosed [ in the host")?;
            let ip: std::net::Ipv6Addr = h.parse().map_err(|_| "bad IPv6 address")?;
            (ip.to_string(), tail)
        } else {
            match authority.rsplit_once(':') {
                Some((h, _)) => (h.to_ascii_lowercase(), &authority[h.len()..]),
                None => (authority.to_ascii_lowercase(), ""),
            }
        };
        let port = match port.strip_prefix(':') {
            None if port.is_empty() => scheme.default_port(),
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or("the port must be 1 to 65535")?,
            None => return Err("bad host".into()),
        };
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':');
        if !name_ok || (host.contains(':') && host.parse::<IpAddr>().is_err()) {
            return Err("the host must be a DNS name or an IP address".into());
        }
        Ok(Self {
            scheme,
            host,
            port,
            path,
        })
    }

    /// The host as an IP address, if it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// `Host` header value.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.scheme.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// One `allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Origin {
        scheme: Scheme,
        host: String,
        port: u16,
    },
    Net {
        addr: IpAddr,
        prefix: u8,
    },
}

impl Entry {
    fn parse(s: &str) -> Result<Self, String> {
        if s.contains("://") {
            let d = Destination::parse(s)?;
            if d.path != "/" {
                return Err(format!("{s:?}: an origin entry has no path"));
            }
            return Ok(Entry::Origin {
                scheme: d.scheme,
                host: d.host,
                port: d.port,
            });
        }
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is neither an origin (https://host:port) nor a CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{s:?}: bad prefix length"))?
        };
        Ok(Entry::Net { addr, prefix })
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let ip = canonical(ip);
    // An IPv4-mapped network (`::ffff:10.0.0.0/104`) is the IPv4 network
    // of its last 32 bits.
    let prefix = match (net, canonical(net)) {
        (IpAddr::V6(_), IpAddr::V4(_)) => prefix.saturating_sub(96),
        _ => prefix,
    };
    match (ip, canonical(net)) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// An IPv4-mapped, IPv4-compatible or NAT64 (`64:ff9b::/96`) IPv6
/// address as the IPv4 address it reaches.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = a.segments();
            let tail = std::net::Ipv4Addr::new(
                (s[6] >> 8) as u8,
                s[6] as u8,
                (s[7] >> 8) as u8,
                s[7] as u8,
            );
            let compatible = s[..6] == [0; 6] && u32::from(tail) > 1;
            let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            if compatible || nat64 {
                IpAddr::V4(tail)
            } else {
                ip
            }
        }
        v4 => v4,
    }
}

/// Why an address is never a destination by default, if it is such.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V4(a) if a.is_link_local() => Some("link-local (cloud metadata)"),
        // 0.0.0.0/8: "this network"; Linux connects it to the host itself.
        IpAddr::V4(a) if a.octets()[0] == 0 => Some("unspecified"),
        IpAddr::V4(a) if a.is_multicast() || a.is_broadcast() => Some("multicast or broadcast"),
        IpAddr::V6(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V6(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V6(a) if a.is_multicast() => Some("multicast"),
        IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80 => {
            Some("link-local (cloud metadata)")
        }
        // fd00:ec2::254: a cloud metadata service's IPv6 address.
        IpAddr::V6(a) if a.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254] => {
            Some("cloud metadata")
        }
        _ => None,
    }
}

/// The operator's allow list.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    entries: Vec<Entry>,
    allow_http: bool,
}

impl Egress {
    /// Parses `[webhooks] allow`; the error names the bad entry.
    pub fn parse(allow: &[String], allow_http: bool) -> Result<Self, String> {
        let entries = allow
            .iter()
            .map(|s| Entry::parse(s))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            entries,
            allow_http,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn origin_entry(&self, d: &Destination) -> bool {
        self.entries.iter().any(|e| {
            matches!(e, Entry::Origin { scheme, host, port }
                if *scheme == d.scheme && *host == d.host && *port == d.port)
        })
    }

    fn net_entry(&self, ip: IpAddr) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e, Entry::Net { addr, prefix } if in_net(ip, *addr, *prefix)))
    }

    fn scheme_ok(&self, d: &Destination) -> Result<(), String> {
        if d.scheme == Scheme::Http && !self.allow_http && !self.origin_entry(d) {
            return Err(
                "plain http:// is refused (the operator allows it per origin, or with webhooks.allow_http)"
                    .into(),
            );
        }
        Ok(())
    }

    /// Whether a URL may be saved: it could be allowed at delivery. A name
    /// under a CIDR entry is only judged once it resolves.
    pub fn admits(&self, d: &Destination) -> Result<(), String> {
        if self.entries.is_empty() {
            return Err("this appliance sends no traffic out (webhooks.allow is empty)".into());
        }
        self.scheme_ok(d)?;
        if self.origin_entry(d) {
            return Ok(());
        }
        match d.ip() {
            Some(ip) => self.address_ok(d, ip),
            None if self.entries.iter().any(|e| matches!(e, Entry::Net { .. })) => Ok(()),
            None => Err(format!("{} is not in webhooks.allow", d.authority())),
        }
    }

    /// Whether a delivery to `d` may connect to `ip`.
    pub fn address_ok(&self, d: &Destination, ip: IpAddr) -> Result<(), String> {
        self.scheme_ok(d)?;
        let named = d.ip().is_some_and(|h| canonical(h) == canonical(ip)) && self.origin_entry(d);
        if named || self.net_entry(ip) {
            return Ok(());
        }
        if let Some(kind) = special(ip) {
            return Err(format!(
                "{} resolves to {ip}, a {kind} address, which webhooks.allow does not name",
                d.host
            ));
        }
        if self.origin_entry(d) {
            return Ok(());
        }
        Err(format!("{ip} ({}) is not in webhooks.allow", d.host))
    }

    /// Resolves `d` and returns the first address it may connect to, or
    /// why none may be used.
    pub async fn resolve(&self, d: &Destination) -> Result<SocketAddr, String> {
        if self.entries.is_empty() {
            return Err("webhooks.allow is empty".into());
        }
        let addrs: Vec<SocketAddr> = match d.ip() {
            Some(ip) => vec![SocketAddr::new(ip, d.port)],
            None => tokio::net::lookup_host((d.host.as_str(), d.port))
                .await
                .map_err(|e| format!("cannot resolve {}: {e}", d.host))?
                .collect(),
        };
        let mut why = format!("{} resolves to no address", d.host);
        for a in addrs {
            match self.address_ok(d, a.ip()) {
                Ok(()) => return Ok(a),
                Err(e) => why = e,
            }
        }
        Err(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eg(list: &[&str]) -> Egress {
        Egress::parse(
            &list.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            false,
        )
        .unwrap()
    }

    fn d(url: &str) -> Destination {
        Destination::parse(url).unwrap()
    }

    #[test]
    fn urls_parse_strictly() {
        let x = d("https://SIEM.corp.example:8443/hook?a=1");
        assert_eq!(
            (x.host.as_str(), x.port, x.path.as_str()),
            ("siem.corp.example", 8443, "/hook?a=1")
        );
        assert_eq!(d("https://[::1]:9/").host, "::1");
        assert_eq!(d("http://h").port, 80);
        assert_eq!(d("https://h?x").path, "/?x");
        for bad in [
            "ftp://h/",
            "https://u:p@h/",
            "https://h/#f",
            "https://h:0/",
            "https://h:99999/",
            "https:// h/",
            "https:///x",
            "https://h_x/",
            "https://[::1/",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_allow_list_decides_after_resolution() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Empty: nothing at all.
        assert!(eg(&[]).admits(&d("https://10.1.2.3/")).is_err());
        let e = eg(&["https://siem.corp.example:8443", "10.0.0.0/8"]);
        assert!(e.admits(&d("https://siem.corp.example:8443/x")).is_ok());
        assert!(e.admits(&d("https://10.9.9.9/")).is_ok());
        assert!(e.admits(&d("https://192.168.1.1/")).is_err());
        assert!(
            e.admits(&d("http://10.9.9.9/")).is_err(),
            "http needs leave"
        );
        // A named origin resolving to loopback or metadata is refused.
        let siem = d("https://siem.corp.example:8443/");
        assert!(e.address_ok(&siem, ip("10.1.1.1")).is_ok());
        assert!(e.address_ok(&siem, ip("203.0.113.7")).is_ok());
        assert!(e.address_ok(&siem, ip("127.0.0.1")).is_err());
        assert!(e.address_ok(&siem, ip("169.254.169.254")).is_err());
        assert!(e.address_ok(&siem, ip("::ffff:127.0.0.1")).is_err());
        assert!(e.address_ok(&siem, ip("fe80::1")).is_err());
        // The same hosts written as IPv6: compatible, NAT64; and 0.0.0.0/8.
        for s in [
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "0.1.2.3",
        ] {
            assert!(e.address_ok(&siem, ip(s)).is_err(), "{s}");
        }
        // A mapped CIDR is the IPv4 network of its last 32 bits.
        let mapped = eg(&["::ffff:10.0.0.0/104"]);
        assert!(mapped.admits(&d("https://10.200.0.1/")).is_ok());
        assert!(mapped.admits(&d("https://11.0.0.1/")).is_err());
        // A loopback address only when named literally or by CIDR.
        let lo = eg(&["https://127.0.0.1:9443"]);
        assert!(lo.admits(&d("https://127.0.0.1:9443/h")).is_ok());
        assert!(lo.admits(&d("https://127.0.0.1:9444/h")).is_err());
        let by_name = eg(&["https://localhost:9443"]);
        assert!(by_name.admits(&d("https://localhost:9443/")).is_ok());
        assert!(
            by_name
                .address_ok(&d("https://localhost:9443/"), ip("127.0.0.1"))
                .is_err()
        );
        let cidr = eg(&["127.0.0.0/8"]);
        assert!(
            cidr.address_ok(&d("https://localhost:1/"), ip("127.0.0.1"))
                .is_ok()
        );
        assert!(Egress::parse(&["10.0.0.0/33".into()], false).is_err());
        assert!(Egress::parse(&["https://h:1/path".into()], false).is_err());
        assert!(Egress::parse(&["siem".into()], false).is_err());
        // http by origin entry or by the switch.
        let h = eg(&["http://10.0.0.5:8080"]);
        assert!(h.admits(&d("http://10.0.0.5:8080/")).is_ok());
        let any_http = Egress::parse(&["10.0.0.0/8".into()], true).unwrap();
        assert!(any_http.admits(&d("http://10.0.0.5/")).is_ok());
    }
}
