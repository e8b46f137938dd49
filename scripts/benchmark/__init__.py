"""vxlanpy benchmark: data plane, control plane and scale, against Docker's drivers and hand-built kernel VXLAN.

Run it through `scripts/bench` (root, a running dockerd; it runs `python -m scripts.benchmark`):

    sudo ./scripts/bench [--quick] [--json PATH] [--png PATH] [--only SECTION,...]

Sections (in the order they run), one module each:

    startup           seconds until the plugin answers /Plugin.Activate: scripts/run (installed) and vxlanpy serve
    dataplane-local   iperf3 TCP throughput and ping RTT between two containers on one host:
                      vxlanpy vs Docker's bridge vs a raw veth pair between two namespaces (the limit)
    control           `docker network create`, `docker run --rm` and N parallel `docker run -d`:
                      vxlanpy (and with -o gateway=docker_gwbridge) vs bridge vs macvlan
    calls             plugin call latency over the socket: CreateEndpoint+Join, Leave+DeleteEndpoint, DeleteNetwork
    scale             per-operation cost with 10/100/1000 networks and with 1000+ endpoints (socket calls), and
                      the plugin's RSS at each
    dataplane-cross   the same between two network-namespace hosts: vxlanpy (multi-host harness, etcd mode) vs
                      the same topology built by hand with iproute2 (veth -> bridge -> vxlan -> underlay)
    dataplane-encrypted
                      the same between h1 and h2 on a network made with -o encrypted (VXLAN inside WireGuard)
                      beside the plain one, interleaved: the ratio, the backend measured (wireguard-go or
                      kernel) and each host's WireGuard counters (proof the traffic went through it)
    convergence       multi-host convergence (docker run on h1 -> first ping reply from h2), etcd mode
    cluster-scale     one real vxlanpy host among N simulated ones (100 endpoints each) in etcd: full resync
                      time, change latency under churn, the plugin's RSS and CPU, netlink writes per change

Shared by them: runner (running programs, namespaces), params (sizes, addresses, the expected rows), results,
output (table, markdown, chart), plugin (the plugin process and socket calls), docker_side, wireguard_side (a
host's WireGuard backend and counters), traffic (iperf3 and ping) and context (the run's lazily made resources);
cli is the command line.

Everything it makes (the plugin process and its state dir, Docker networks and containers labelled
vxlanpy.bench=1, namespaces vxb-*, the dummy parent, the multi-host cluster) is removed on exit, failure and
Ctrl-C included.  Traffic only goes to container addresses and namespaces made here.
"""
