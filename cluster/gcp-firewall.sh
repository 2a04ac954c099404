#!/usr/bin/env bash
# Firewall rules for cluster/gcp.yaml. The Ray cluster launcher creates none on GCP; every
# node of the cluster carries the network tag "interp-ray", and these two rules are all it
# needs: SSH from your machine (ray up / ray dashboard / ray attach tunnel through it) and
# any traffic between the cluster's own nodes. Nothing opens 8265 (dashboard/Jobs API),
# 8000 (Serve), 6379 (GCS) or 10001 (Ray Client) to the outside.
#
#   PROJECT=YOUR-GCP-PROJECT SSH_SOURCE=203.0.113.7/32 bash cluster/gcp-firewall.sh
#
# SSH_SOURCE defaults to 0.0.0.0/0 (like the SSH rule Ray itself creates on AWS); narrow it
# to your own address range when you can. Check that no other rule in the network opens
# more to the internet:
#   gcloud compute firewall-rules list --project "$PROJECT" --filter="sourceRanges:0.0.0.0/0"
set -euo pipefail

PROJECT="${PROJECT:-YOUR-GCP-PROJECT}"
NETWORK="${NETWORK:-default}"
SSH_SOURCE="${SSH_SOURCE:-0.0.0.0/0}"
TAG=interp-ray

gcloud compute firewall-rules create interp-ray-allow-ssh \
  --project="$PROJECT" --network="$NETWORK" --direction=INGRESS \
  --allow=tcp:22 --source-ranges="$SSH_SOURCE" --target-tags="$TAG"

gcloud compute firewall-rules create interp-ray-allow-internal \
  --project="$PROJECT" --network="$NETWORK" --direction=INGRESS \
  --allow=tcp,udp,icmp --source-tags="$TAG" --target-tags="$TAG"
