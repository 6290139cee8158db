"""Per-stack private networks on one host: names, address management, links, namespaces.

    names    deterministic names of everything this package creates (pure)
    ipam     subnet and address allocation (pure)
    nsenter  namespace syscalls on the calling thread: create/remove a netns, sockets inside one
    links    bridges, veth pairs and instance namespaces through netlink (pyroute2)

Only the agent imports `links` and `nsenter`; `names` and `ipam` have no I/O.
"""
