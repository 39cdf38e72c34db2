"""One module per part of the study, each returning a results/ type: preset (the main table),
peer (its peers), waterfall, training, scaling, quantized, traces."""
