"""A test bed of simulated hosts on this machine: one network namespace per host, all joined
by an underlay bridge in the root namespace, as a rack's hosts are by a switch. The
multi-host tests run on it, and `make demo-cluster` (`python -m rackfire.testbed up`) puts
a real agent in each host, joined to a server of its own.

    root netns   rfu<bed>          bridge, 172.31.X.254/24 (so a controller in the root netns
                 │                 reaches the hosts, and as this bed's claim on the /24)
                 ├─ rfu<bed>h1 ─── eth0 172.31.X.1/24 in netns rfh-<bed>-1
                 ├─ rfu<bed>h2 ─── eth0 172.31.X.2/24 in netns rfh-<bed>-2
                 └─ ...

Everything is named with `rfh-`/`rfu` and the bed's random id, so leftovers are findable and
two beds never share a name. X is chosen, under a lock, among the /24s of 172.31.0.0/16 that
no address or route of the root netns overlaps: the other beds' bridges hold theirs there.

Commands run inside a host with `nsenter --net` (see `run_in`). `destroy` removes everything
the bed made and is registered with atexit, so an interrupted run cleans up too (a SIGKILL
leaves leftovers; `leftovers()` finds them).

    bed.py       Bed, Host: the hosts' namespaces and the underlay; commands run inside them
    ping.py      icmp_ping: echo requests with DF set, from inside any netns
    cluster.py   `make demo-cluster`: `up` (a server and an agent per host) and `down`
    sweep.py     what `down` removes by hand: a host's instances (`reap`, with the agent's
                 own code), the bed's processes, cgroups and runc state
    __main__.py  `python -m rackfire.testbed up|down|reap`
"""
