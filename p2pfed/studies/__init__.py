"""Studies on real multi-site data, run end to end on real daemons (``p2pfed study …``)."""
