"""A user's own flow-matching pieces, kept outside flowctl: a 1-D U-Net velocity network
and a sample metric. Put this folder on PYTHONPATH and name them by import path:

    flowctl train --network flow_nets.unet:UNet1d --network-args '{"channels": 16}' \
        --eval-fn flow_nets.metrics:mean_error --eval-every 1
"""
