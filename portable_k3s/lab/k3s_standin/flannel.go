package main

// flannel's VXLAN backend, embedded as k3s embeds it: the kube subnet manager (the node's podCIDR), the VXLAN
// device on flannel-iface, the masquerade and forward rules, /run/flannel/subnet.env; then the CNI config.

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flannel-io/flannel/pkg/backend"
	_ "github.com/flannel-io/flannel/pkg/backend/vxlan" // registers the vxlan backend
	"github.com/flannel-io/flannel/pkg/ip"
	"github.com/flannel-io/flannel/pkg/ipmatch"
	"github.com/flannel-io/flannel/pkg/subnet/kube"
	"github.com/flannel-io/flannel/pkg/trafficmngr/iptables"
)

func runFlannel(ctx context.Context, cfg config, node string) error {
	netConf := fmt.Sprintf(`{"Network": %q, "EnableIPv4": true, "EnableIPv6": false, "Backend": {"Type": "vxlan"}}`, clusterCIDR)
	if err := writeIfChanged(flannelNetConf, []byte(netConf), 0o644); err != nil {
		return err
	}
	if err := os.Setenv("NODE_NAME", node); err != nil {
		return err
	}
	// flannel takes the node's podCIDR once: wait until kubelet has registered the node and the
	// controller-manager has given it one, as k3s does before starting flannel.
	client, err := clientFor(agentPath("k3scontroller.kubeconfig"))
	if err != nil {
		return err
	}
	for {
		n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err == nil && n.Spec.PodCIDR != "" {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	sm, err := kube.NewSubnetManager(ctx, "", agentPath("k3scontroller.kubeconfig"), "flannel.alpha.coreos.com", flannelNetConf, false)
	if err != nil {
		return err
	}
	netCfg, err := sm.GetNetworkConfig(ctx)
	if err != nil {
		return err
	}
	stack, err := ipmatch.GetIPFamily(true, false)
	if err != nil {
		return err
	}
	iface := cfg.str("flannel-iface")
	if iface == "" && cfg.str("vpn-auth-file") != "" {
		iface = "tailscale0" // k3s's own tailscale integration puts flannel on the tailnet
	}
	ext, err := ipmatch.LookupExtIface(iface, "", "", stack, ipmatch.PublicIPOpts{})
	if err != nil {
		return fmt.Errorf("flannel-iface %q: %w", iface, err)
	}
	be, err := backend.NewManager(ctx, sm, ext).GetBackend(netCfg.BackendType)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	bn, err := be.RegisterNetwork(ctx, &wg, netCfg)
	if err != nil {
		return err
	}
	rules := &iptables.IPTablesManager{}
	if err := rules.Init(ctx); err != nil {
		return err
	}
	if err := rules.SetupAndEnsureMasqRules(ctx, netCfg.Network, ip.IP4Net{}, ip.IP4Net{}, netCfg.IPv6Network,
		ip.IP6Net{}, ip.IP6Net{}, bn.Lease(), 60, false); err != nil {
		return err
	}
	rules.SetupAndEnsureForwardRules(ctx, netCfg.Network, netCfg.IPv6Network, 50)
	if err := sm.HandleSubnetFile(flannelSubnetEnv, netCfg, true, bn.Lease().Subnet, bn.Lease().IPv6Subnet, bn.MTU()); err != nil {
		return err
	}
	if err := writeCNIConfig(bn.Lease().Subnet, bn.MTU()); err != nil {
		return err
	}
	logf("flannel: subnet %s on %s (%s), MTU %d", bn.Lease().Subnet, ext.Iface.Name, ext.IfaceAddr, bn.MTU())
	bn.Run(ctx)
	return nil
}

// writeCNIConfig writes what flannel's CNI plugin hands to the bridge plugin (Debian's CNI plugins have no flannel
// plugin): a cni0 bridge, this node's pod subnet by host-local, the VXLAN MTU, hairpin, port mappings.
func writeCNIConfig(subnet ip.IP4Net, mtu int) error {
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "cbr0",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "isDefaultGateway": true,
      "forceAddress": true,
      "hairpinMode": true,
      "ipMasq": false,
      "mtu": %d,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "dataDir": "/var/lib/cni/networks"}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, mtu, subnet.String())
	return writeIfChanged(cniConfDir+"/10-flannel.conflist", []byte(conf), 0o644)
}
