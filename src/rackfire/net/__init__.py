"""Per-stack private networks on one host: names, links, namespaces. (Address allocation
is the controller's decision and lives in plan/ipam.py.)

    names    deterministic names of everything this package creates (pure)
    nsenter  namespace syscalls on the calling thread: create/remove a netns, sockets inside one
    links    bridges, veth pairs and instance namespaces through netlink (pyroute2)

Only the agent imports `links` and `nsenter`; `names` has no I/O.
"""
