//! `expose.cidr`: the network mode `virtual` hands addresses out from.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 or IPv6 network, with the range of its usable host addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
    /// First and last usable address as integers (IPv4 in the low 32 bits).
    first: u128,
    last: u128,
}

impl Cidr {
    /// Parses `ip/prefix`. The address must be the network's own (no host bits set), so a typo
    /// like `127.77.0.1/16` is caught instead of silently meaning `127.77.0.0/16`.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let err = |why: &str| format!("`{text}` is not a CIDR like `127.77.0.0/16`: {why}");
        let (ip, prefix) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| err("missing `/prefix`"))?;
        let ip: IpAddr = ip.parse().map_err(|_| err("not an IP address"))?;
        let bits: u8 = if ip.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= bits)
            .ok_or_else(|| err(&format!("the prefix must be a number from 0 to {bits}")))?;
        let value = to_u128(ip);
        let host_mask: u128 = if prefix == bits {
            0
        } else {
            (1u128 << (bits - prefix)) - 1
        };
        let network = value & !host_mask;
        if network != value {
            return Err(err(&format!(
                "host bits are set (the network is `{}/{prefix}`)",
                from_u128(network, ip.is_ipv4())
            )));
        }
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(err("not a unicast network"));
        }
        let end = network | host_mask;
        // The network address (IPv4 and the IPv6 subnet-router anycast) and the IPv4 broadcast
        // address are not host addresses, except in /31, /32 (and IPv6 /127, /128), which have
        // no room for them.
        let (first, last) = match (ip.is_ipv4(), bits - prefix) {
            (_, 0 | 1) => (network, end),
            (true, _) => (network + 1, end - 1),
            (false, _) => (network + 1, end),
        };
        Ok(Cidr {
            network: ip,
            prefix,
            first,
            last,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.network.is_ipv4() && (self.first..=self.last).contains(&to_u128(ip))
    }

    /// The usable addresses from the first one on, in order.
    pub fn hosts(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let v4 = self.network.is_ipv4();
        (self.first..=self.last).map(move |n| from_u128(n, v4))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(n: u128, v4: bool) -> IpAddr {
    if v4 {
        // Only called with values taken from an IPv4 network, which fit in 32 bits.
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(text: &str, n: usize) -> Vec<String> {
        Cidr::parse(text)
            .unwrap()
            .hosts()
            .take(n)
            .map(|ip| ip.to_string())
            .collect()
    }

    #[test]
    fn host_addresses_skip_network_and_broadcast() {
        assert_eq!(hosts("127.77.0.0/16", 2), ["127.77.0.1", "127.77.0.2"]);
        assert_eq!(hosts("10.0.0.0/30", 9), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(hosts("10.0.0.0/31", 9), ["10.0.0.0", "10.0.0.1"]);
        assert_eq!(hosts("10.0.0.7/32", 9), ["10.0.0.7"]);
        assert_eq!(hosts("fd00::/64", 2), ["fd00::1", "fd00::2"]);
        assert_eq!(hosts("::1/128", 9), ["::1"]);
        let c = Cidr::parse("127.77.0.0/16").unwrap();
        assert!(c.contains("127.77.255.254".parse().unwrap()));
        assert!(!c.contains("127.77.255.255".parse().unwrap()), "broadcast");
        assert!(!c.contains("127.77.0.0".parse().unwrap()), "network");
        assert!(!c.contains("127.78.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert_eq!(c.to_string(), "127.77.0.0/16");
    }

    #[test]
    fn mistakes_are_explained() {
        for (text, why) in [
            ("127.77.0.0", "missing `/prefix`"),
            ("127.77.0/16", "not an IP address"),
            ("127.77.0.0/33", "from 0 to 32"),
            ("fd00::/129", "from 0 to 128"),
            (
                "127.77.0.1/16",
                "host bits are set (the network is `127.77.0.0/16`)",
            ),
            ("0.0.0.0/0", "not a unicast network"),
            ("224.0.0.0/8", "not a unicast network"),
        ] {
            let e = Cidr::parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
