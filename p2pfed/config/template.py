"""The commented ``config.toml`` that ``p2pfed init`` writes: every table, every key."""

from __future__ import annotations

DEFAULT_TEMPLATE = """\
# p2pfed peer configuration for {name}.
# Relative paths are resolved against this file's folder. Every key is optional except
# [node] name; unknown keys are refused, so a typo never goes unnoticed.

[node]
name = "{name}"
identity = "identity.key"      # Ed25519 key, mode 0600; never share it
state_dir = "state"            # checkpoints, ledger, audit log, status
log_json = false               # one JSON object per log line
log_level = "info"

[network]
listen = "/ip4/0.0.0.0/tcp/4001"   # open this TCP port to consortium members only
roster = "roster.json"             # the consortium's signed member list
bootstrap = []                     # multiaddrs of members to dial first
hole_punch = true                  # behind NAT: turn relayed links direct where NATs allow

[rounds]
mode = "ring"                  # ring (exact average) or gossip (neighbours in a topology)
topology = "exponential"       # for gossip: see `p2pfed topology list`
rounds = 20
min_peers = 2                  # rounds start only when this many members are reachable
round_timeout_s = 120.0        # start-up and catch-up wait, and the longest stage deadline
# stage_timeout_min_s = 0      # shortest stage deadline (0: min(10 s, round_timeout_s / 4))
# stage_timeout_max_s = 0      # longest (0: round_timeout_s); deadlines follow the measured
# link_mbps = 100.0            # ...round cost, from this link rate until one is measured
robust = "off"                 # clear gossip: "clipped-gossip" bounds a Byzantine neighbour
byzantine_neighbours = 1       # ...the clipping radius allows for this many per member
weighting = "uniform"          # "examples": FedAvg's mean weighted by rows (ring, privacy off)
max_examples = 10000           # ...a member's rows count up to this many

[model]
kind = "logistic"              # logistic, mlp, or module:factory
# factory = "my_models:resnet"  # your own model: a function returning a torch nn.Module
# args = {{ width = 64 }}        # ...called with these keyword arguments
# torchscript = "model.pt"     # or a TorchScript file (instead of kind and factory)
hidden = [32]                  # mlp hidden layer widths
seed = 0                       # every member must use the same seed

[data]
builtin = "breast_cancer"      # or: path = "data/patients.csv" (and remove builtin)
# loader = "my_data:images"    # or a function returning a torch Dataset of (x, y) pairs
label_column = "label"
feature_columns = []           # empty: every column but the label
test_fraction = 0.2            # held out locally for evaluation

[schema]                       # the consortium's declared data schema
features = []                  # empty: taken from the data
labels = [0, 1]

[study]
protocol = ""                  # the consortium's signed study protocol file, e.g. "protocol.json"

[validation]                   # the node refuses to join past these limits
min_samples = 30
max_missing_fraction = 0.0
max_label_skew = 0.45          # total-variation distance from the declared label shares
min_classes = 1

[training]
local_epochs = 1
batch_size = 32
learning_rate = 0.1
optimizer = "sgd"              # sgd or adam
fedprox_mu = 0.0               # > 0 adds (mu/2)|w - w_global|^2 against client drift
personal_prefixes = []         # parameter-name prefixes that never leave this node

[privacy]
mode = "distributed"           # distributed, local, dp-sgd (per patient), or off
clip_norm = 1.0                # L2 bound S on each update (dp-sgd: on each example's gradient)
noise_multiplier = 1.0         # sigma: noise std is sigma * S (split across members)
target_epsilon = 8.0           # > 0: pick sigma so all rounds spend at most this epsilon
sample_rate = 1.0              # dp-sgd: Poisson rate of each local step
steps_per_round = 1            # for `privacy report`: dp-sgd local steps per round
delta = 1e-5
epsilon_budget = 10.0          # the node refuses any release past this
accountant = "pld"             # pld or rdp (distributed + secagg: rdp governs)
ledger = "state/privacy.ledger"

[secagg]
enabled = true
threshold = 0                  # Shamir shares to recover a dropped member; 0 = a majority
collusion = 1                  # members assumed to pool what they see (threat model's c)
min_contributors = 0           # fewest inputs any unmasked sum holds; 0 = collusion + 2
bits = 32                      # ring Z_2^bits
clip_range = 8.0

[governance]
accuracy_drop = 0.05           # drift alert when accuracy falls this much
psi_major = 0.2                # drift alert when a feature's PSI exceeds this

[metrics]
port = 0                       # Prometheus /metrics and the dashboard at /; 0 = off
host = "127.0.0.1"             # off loopback, dashboard_token_file is required
dashboard_token_file = ""      # a file with one token line; clients send it as Bearer
"""


def render_default(name: str) -> str:
    """The commented ``config.toml`` that ``p2pfed init`` writes."""
    return DEFAULT_TEMPLATE.format(name=name.replace('"', ""))
