//! `--family`: the address family of a point. The sweep's namespaces carry both families
//! (IPv6 addresses from fd88::/16, ULA, added with `nodad`); a point's relays listen on
//! the family's wildcard address and its publisher and viewers call them over it.
//!
//! | | IPv4 | IPv6 |
//! |---|---|---|
//! | publisher | 10.88.1.2 | fd88:1::2 |
//! | relay (publisher side) | 10.88.1.1 | fd88:1::1 |
//! | relay (viewer side) | 10.88.2.1 | fd88:2::1 |
//! | stsb-view | 10.88.2.2 | fd88:2::2 |
//! | viewer i | 10.88.128.1 + i (local 10.88.128.0/20) | fd88:128::1 + i (local fd88:128::/112) |
//! | tree: origin → edge 0 / 1 | 10.88.4.1 / 10.88.5.1 | fd88:4::1 / fd88:5::1 |
//! | tree: edge 1 (viewer side) | 10.88.3.1 | fd88:3::1 |

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
}

const fn v6(net: u16, host: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd88, net, 0, 0, 0, 0, 0, host))
}

const fn v4(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 88, net, host))
}

impl Family {
    /// As the option is spelled.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    /// The family's address in network `net` (10.88.net.0/24, fd88:net::/64).
    fn addr(self, net: u8, host: u8) -> IpAddr {
        match self {
            Family::Ipv4 => v4(net, host),
            // fd88:128:: for the viewers' range, written like its IPv4 10.88.128.
            Family::Ipv6 => v6(
                u16::from_str_radix(&net.to_string(), 16).expect("decimal digits"),
                host.into(),
            ),
        }
    }

    /// The relay's address as the publisher reaches it (the tree: the origin's).
    pub fn relay_pub(self) -> IpAddr {
        self.addr(1, 1)
    }

    /// The relay's address as the viewers reach it (the tree: edge 0's).
    pub fn relay_view(self) -> IpAddr {
        self.addr(2, 1)
    }

    /// Viewer 0's address (viewer i: + i).
    pub fn viewer_base(self) -> IpAddr {
        self.addr(128, 1)
    }

    /// The tree: each edge's address towards the viewers.
    pub fn edge_view(self, edge: usize) -> IpAddr {
        self.addr([2, 3][edge], 1)
    }

    /// The tree: the origin's address as edge `edge` reaches it.
    pub fn edge_upstream(self, edge: usize) -> IpAddr {
        self.addr([4, 5][edge], 1)
    }

    /// Where a relay listens (`port`): the family's wildcard address. `[::]` is
    /// dual-stack (the relay's sockets are whatever bindv6only says).
    pub fn any(self, port: u16) -> SocketAddr {
        match self {
            Family::Ipv4 => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
            Family::Ipv6 => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
        }
    }

    /// The tag's prefix for this family's points ("" for IPv4: the names of before).
    pub fn tag(self) -> &'static str {
        match self {
            Family::Ipv4 => "",
            Family::Ipv6 => "v6-",
        }
    }
}

/// `ip` and `port` as a URL or a config's `host:port` writes them (`[…]` around IPv6).
pub fn host_port(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_families_name_the_same_hosts() {
        let f4 = Family::Ipv4;
        let f6 = Family::Ipv6;
        assert_eq!(f4.relay_pub().to_string(), "10.88.1.1");
        assert_eq!(f6.relay_pub().to_string(), "fd88:1::1");
        assert_eq!(f4.viewer_base().to_string(), "10.88.128.1");
        assert_eq!(f6.viewer_base().to_string(), "fd88:128::1");
        assert_eq!(f6.edge_view(1).to_string(), "fd88:3::1");
        assert_eq!(f6.edge_upstream(0).to_string(), "fd88:4::1");
        assert_eq!(host_port(f6.relay_view(), 9999), "[fd88:2::1]:9999");
        assert_eq!(host_port(f4.relay_view(), 9999), "10.88.2.1:9999");
        assert_eq!(f6.any(9998).to_string(), "[::]:9998");
    }
}
