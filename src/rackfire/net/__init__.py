"""Per-stack private networks: names, links, namespaces on a host, and VXLAN between hosts.
(Address allocation is the controller's decision and lives in plan/ipam.py.)

    names    deterministic names of everything this package creates (pure)
    nsenter  namespace syscalls on the calling thread: create/remove a netns, sockets inside one
    links    bridges, veth pairs and instance namespaces through netlink (pyroute2)
    vxlan    a stack's bridge joined to the other hosts' (one VNI per stack)
    garp     an instance announces its IP and MAC (gratuitous ARP and a broadcast frame)
    egress   a stack's NAT through its host and per-role opt-out (one nftables table)

Only the agent imports `links`, `vxlan`, `garp`, `egress` and `nsenter`; `names` has no I/O.
"""
