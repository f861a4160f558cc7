"""Integration tests: they need root (network namespaces, real pcap, real nft/iptables)."""
