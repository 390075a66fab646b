"""``pgquorumctl`` (also ``pgquorum ctl``): operate a running cluster through its members' REST API.

``client`` speaks HTTP to the agents, ``format`` turns answers into tables and one-line errors (pure
functions), ``discovery`` finds the member APIs (``--api``, ``--etcd``, ``--local``), ``main`` holds
the commands.
"""
