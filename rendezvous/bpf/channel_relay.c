// SPDX-License-Identifier: MIT OR GPL-2.0
/*
 * Kernel fast path for TURN channels (RFC 8656 section 12), IPv4: a tc (clsact ingress)
 * program that relays established ChannelData traffic without waking user space.
 *
 *   client -> peer: a UDP datagram to the server's listening ip:port carrying ChannelData
 *     (first byte 0x40-0x4F) from a (client ip, client port, channel) held in map `cp_c2p`
 *     loses its 4-byte header (and any padding) and leaves as a plain UDP datagram from the
 *     allocation's relayed ip:port to the peer ip:port.
 *   peer -> client: a UDP datagram to a relayed ip:port from a peer held in map `cp_p2c` gains
 *     the 4-byte ChannelData header and leaves from the server's ip:port to the client.
 *
 * The payload is moved by 4 bytes in place (the UDP header keeps its offset), so a partially
 * checksummed skb (CHECKSUM_PARTIAL, as loopback and veth hand them over) keeps a valid
 * csum_start; every header change goes through bpf_l4_csum_replace, which updates a full
 * checksum or the pseudo-header seed of a partial one as the skb needs, and leaves a zero
 * (absent) UDP checksum zero. A destination on this host (loopback) continues up the stack
 * (TC_ACT_OK); another host is reached through bpf_fib_lookup and bpf_redirect to egress.
 * Anything else (STUN, unknown channels, bad lengths, IP options, fragments, non-UDP, IPv6,
 * unresolved neighbours) passes untouched to user space.
 *
 * Map layouts are mirrored in rendezvous/offload.py: keep them in step.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define L3_OFF ETH_HLEN
#define L4_OFF (ETH_HLEN + sizeof(struct iphdr))
#define CSUM_OFF (L4_OFF + offsetof(struct udphdr, check))
#define DATA_OFF (L4_OFF + sizeof(struct udphdr))
#define CHUNK 256
#define MAX_CHUNKS 6 /* payloads up to 1536 bytes; larger ones stay in user space */
#define MAX_DATA (CHUNK * MAX_CHUNKS)
#define FRESH_TTL 64
#define AF_INET 2

/* All addresses and ports in network byte order; the channel number too. */
struct c2p_key {
	__u32 client_ip;
	__u16 client_port;
	__u16 channel;
};

struct c2p_val {
	__u32 relayed_ip;
	__u32 peer_ip;
	__u16 relayed_port;
	__u16 peer_port;
	__u32 reserved;
	__u64 packets;
	__u64 bytes; /* application data relayed (the ChannelData length field) */
};

struct p2c_key {
	__u32 relayed_ip;
	__u32 peer_ip;
	__u16 relayed_port;
	__u16 peer_port;
};

struct p2c_val {
	__u32 client_ip;
	__u16 client_port;
	__u16 channel;
	__u64 packets;
	__u64 bytes;
};

/* The server's listening address; ip 0 means any local address (then replies leave from the
 * relayed address). */
struct config {
	__u32 server_ip;
	__u16 server_port;
	__u16 reserved;
};

/* Each map pinned by name, so user space opens it (rendezvous/offload_maps.py); the channel
 * tables capped at 65,536 entries each (a full one leaves new channels in user space). */
#define PINNED_MAP(name, kind, entries, key_type, value_type) \
	struct { \
		__uint(type, kind); \
		__uint(max_entries, entries); \
		__type(key, key_type); \
		__type(value, value_type); \
		__uint(pinning, LIBBPF_PIN_BY_NAME); \
	} name SEC(".maps")

PINNED_MAP(cp_c2p, BPF_MAP_TYPE_HASH, 65536, struct c2p_key, struct c2p_val);
PINNED_MAP(cp_p2c, BPF_MAP_TYPE_HASH, 65536, struct p2c_key, struct p2c_val);
PINNED_MAP(cp_config, BPF_MAP_TYPE_ARRAY, 1, __u32, struct config);

/* Where the rewritten packet goes: up the local stack, out of an interface, or nowhere yet. */
struct route {
	__u32 ifindex; /* 0: deliver locally */
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
};

static __always_inline int find_route(struct __sk_buff *skb, __u32 src, __u32 dst,
				      __u16 sport, __u16 dport, __u16 tot_len, struct route *r)
{
	struct bpf_fib_lookup fib = {};
	int rc;

	r->ifindex = 0;
	if ((bpf_ntohl(dst) >> 24) == 127)
		return 0; /* loopback: the local stack delivers it */
	fib.family = AF_INET;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = sport;
	fib.dport = dport;
	fib.tot_len = tot_len;
	fib.ipv4_src = src;
	fib.ipv4_dst = dst;
	fib.ifindex = skb->ingress_ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NOT_FWDED)
		return 0; /* a local address */
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return -1; /* no neighbour yet, too big, forwarding off...: user space relays it */
	r->ifindex = fib.ifindex;
	__builtin_memcpy(r->smac, fib.smac, ETH_ALEN);
	__builtin_memcpy(r->dmac, fib.dmac, ETH_ALEN);
	return 0;
}

static __always_inline int deliver(struct __sk_buff *skb, const struct route *r)
{
	if (!r->ifindex)
		return TC_ACT_OK;
	if (bpf_skb_store_bytes(skb, 0, r->dmac, ETH_ALEN, 0) ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, r->smac, ETH_ALEN, 0))
		return TC_ACT_SHOT;
	return bpf_redirect(r->ifindex, 0);
}

/* min(left, CHUNK) for left > 0, in a form the verifier can bound (1..CHUNK): the empty asm
 * hides the value from clang, which would otherwise fold the mask away. */
static __always_inline __u64 chunk_size(__u64 left)
{
	if (left > CHUNK)
		left = CHUNK;
	asm volatile("" : "+r"(left));
	return ((left - 1) & (CHUNK - 1)) + 1;
}

/* Move `len` payload bytes starting at DATA_OFF + 4 down to DATA_OFF (strip a header). */
static __always_inline int shift_down(struct __sk_buff *skb, __u32 len)
{
	__u8 buf[CHUNK];

	for (__u32 i = 0; i < MAX_CHUNKS; i++) {
		__u32 done = i * CHUNK;
		__u64 n;

		if (done >= len)
			break;
		n = chunk_size(len - done);
		if (bpf_skb_load_bytes(skb, DATA_OFF + 4 + done, buf, n) ||
		    bpf_skb_store_bytes(skb, DATA_OFF + done, buf, n, BPF_F_RECOMPUTE_CSUM))
			return -1;
	}
	return 0;
}

/* Move `len` payload bytes starting at DATA_OFF up to DATA_OFF + 4 (make room for a header),
 * last chunk first so nothing is overwritten before it is read. */
static __always_inline int shift_up(struct __sk_buff *skb, __u32 len)
{
	__u8 buf[CHUNK];

	for (__s32 i = MAX_CHUNKS - 1; i >= 0; i--) {
		__u32 start = (__u32)i * CHUNK;
		__u64 n;

		if (start >= len)
			continue;
		n = chunk_size(len - start);
		if (bpf_skb_load_bytes(skb, DATA_OFF + start, buf, n) ||
		    bpf_skb_store_bytes(skb, DATA_OFF + 4 + start, buf, n, BPF_F_RECOMPUTE_CSUM))
			return -1;
	}
	return 0;
}

/* Rewrite the IP and UDP headers for the new datagram; the UDP checksum follows every change
 * (pseudo-header fields with BPF_F_PSEUDO_HDR, header fields without). */
static __always_inline int rewrite_headers(struct __sk_buff *skb, struct iphdr *old_ip,
					   struct udphdr *old_udp, __u32 saddr, __u32 daddr,
					   __u16 sport, __u16 dport, __u16 udp_len)
{
	const __u64 mangled = BPF_F_MARK_MANGLED_0;
	struct iphdr ip = *old_ip;
	struct udphdr udp = *old_udp;
	__u16 new_len = bpf_htons(udp_len);
	__s64 sum;

	if (bpf_l4_csum_replace(skb, CSUM_OFF, ip.saddr, saddr, mangled | BPF_F_PSEUDO_HDR | 4) ||
	    bpf_l4_csum_replace(skb, CSUM_OFF, ip.daddr, daddr, mangled | BPF_F_PSEUDO_HDR | 4) ||
	    bpf_l4_csum_replace(skb, CSUM_OFF, udp.len, new_len, mangled | BPF_F_PSEUDO_HDR | 2) ||
	    bpf_l4_csum_replace(skb, CSUM_OFF, udp.len, new_len, mangled | 2) ||
	    bpf_l4_csum_replace(skb, CSUM_OFF, udp.source, sport, mangled | 2) ||
	    bpf_l4_csum_replace(skb, CSUM_OFF, udp.dest, dport, mangled | 2))
		return -1;
	/* The checksum field as the helpers left it. */
	if (bpf_skb_load_bytes(skb, CSUM_OFF, &udp.check, sizeof(udp.check)))
		return -1;
	udp.source = sport;
	udp.dest = dport;
	udp.len = new_len;

	ip.saddr = saddr;
	ip.daddr = daddr;
	ip.tot_len = bpf_htons(udp_len + sizeof(struct iphdr));
	ip.ttl = FRESH_TTL;
	ip.check = 0;
	sum = bpf_csum_diff(0, 0, (__be32 *)&ip, sizeof(ip), 0);
	if (sum < 0)
		return -1;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	ip.check = (__u16)~sum;

	if (bpf_skb_store_bytes(skb, L3_OFF, &ip, sizeof(ip), 0) ||
	    bpf_skb_store_bytes(skb, L4_OFF, &udp, sizeof(udp), 0))
		return -1;
	return 0;
}

static __always_inline int to_peer(struct __sk_buff *skb, struct iphdr *ip, struct udphdr *udp,
				   __u8 *chan_hdr, __u32 payload)
{
	struct c2p_key key = {};
	struct c2p_val *val;
	struct route r;
	__u32 data_len, pad, hdr_word, pad_word = 0;
	__u8 pad_bytes[4] = {};

	if (payload < 4 || chan_hdr[0] < 0x40 || chan_hdr[0] > 0x4f)
		return TC_ACT_OK;
	data_len = ((__u32)chan_hdr[2] << 8) | chan_hdr[3];
	if (4 + data_len > payload || data_len > MAX_DATA)
		return TC_ACT_OK; /* short (or huge) ChannelData: user space decides */
	pad = payload - 4 - data_len;
	if (pad > 3)
		return TC_ACT_OK;
	key.client_ip = ip->saddr;
	key.client_port = udp->source;
	__builtin_memcpy(&key.channel, chan_hdr, 2);
	val = bpf_map_lookup_elem(&cp_c2p, &key);
	if (!val)
		return TC_ACT_OK;
	if (find_route(skb, val->relayed_ip, val->peer_ip, val->relayed_port, val->peer_port,
		       sizeof(struct iphdr) + sizeof(struct udphdr) + data_len, &r))
		return TC_ACT_OK;

	__builtin_memcpy(&hdr_word, chan_hdr, 4);
	if (pad) {
		/* Padding leaves the checksum too: sum it as a word at its 16-bit alignment
		 * (it starts at UDP offset 12 + data_len). */
		__u32 at = DATA_OFF + 4 + data_len;

		if (data_len & 1) {
			if (bpf_skb_load_bytes(skb, at, pad_bytes + 1, pad & 3))
				return TC_ACT_OK;
		} else if (bpf_skb_load_bytes(skb, at, pad_bytes, pad & 3)) {
			return TC_ACT_OK;
		}
		__builtin_memcpy(&pad_word, pad_bytes, 4);
	}
	/* Every copy above read from `ip`/`udp`; the helpers below invalidate packet pointers. */
	struct iphdr old_ip = *ip;
	struct udphdr old_udp = *udp;
	__u32 relayed_ip = val->relayed_ip, peer_ip = val->peer_ip;
	__u16 relayed_port = val->relayed_port, peer_port = val->peer_port;

	if (bpf_l4_csum_replace(skb, CSUM_OFF, hdr_word, 0, BPF_F_MARK_MANGLED_0 | 4) ||
	    (pad && bpf_l4_csum_replace(skb, CSUM_OFF, pad_word, 0, BPF_F_MARK_MANGLED_0 | 4)))
		return TC_ACT_SHOT;
	if (shift_down(skb, data_len))
		return TC_ACT_SHOT;
	if (bpf_skb_change_tail(skb, DATA_OFF + data_len, 0))
		return TC_ACT_SHOT;
	if (rewrite_headers(skb, &old_ip, &old_udp, relayed_ip, peer_ip, relayed_port, peer_port,
			    sizeof(struct udphdr) + data_len))
		return TC_ACT_SHOT;
	__sync_fetch_and_add(&val->packets, 1);
	__sync_fetch_and_add(&val->bytes, data_len);
	return deliver(skb, &r);
}

static __always_inline int to_client(struct __sk_buff *skb, struct iphdr *ip, struct udphdr *udp,
				     __u32 payload, const struct config *cfg)
{
	struct p2c_key key = {};
	struct p2c_val *val;
	struct route r;
	__u32 hdr_word, src_ip;

	if (payload > MAX_DATA)
		return TC_ACT_OK;
	key.relayed_ip = ip->daddr;
	key.relayed_port = udp->dest;
	key.peer_ip = ip->saddr;
	key.peer_port = udp->source;
	val = bpf_map_lookup_elem(&cp_p2c, &key);
	if (!val)
		return TC_ACT_OK;
	src_ip = cfg->server_ip ? cfg->server_ip : ip->daddr;
	if (find_route(skb, src_ip, val->client_ip, cfg->server_port, val->client_port,
		       sizeof(struct iphdr) + sizeof(struct udphdr) + 4 + payload, &r))
		return TC_ACT_OK;

	struct iphdr old_ip = *ip;
	struct udphdr old_udp = *udp;
	__u32 client_ip = val->client_ip;
	__u16 client_port = val->client_port, server_port = cfg->server_port;
	__u8 hdr[4];

	__builtin_memcpy(hdr, &val->channel, 2);
	hdr[2] = payload >> 8;
	hdr[3] = payload & 0xff;
	__builtin_memcpy(&hdr_word, hdr, 4);

	if (bpf_skb_change_tail(skb, DATA_OFF + payload + 4, 0))
		return TC_ACT_SHOT;
	if (shift_up(skb, payload))
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, DATA_OFF, hdr, 4, BPF_F_RECOMPUTE_CSUM))
		return TC_ACT_SHOT;
	if (bpf_l4_csum_replace(skb, CSUM_OFF, 0, hdr_word, BPF_F_MARK_MANGLED_0 | 4))
		return TC_ACT_SHOT;
	if (rewrite_headers(skb, &old_ip, &old_udp, src_ip, client_ip, server_port, client_port,
			    sizeof(struct udphdr) + 4 + payload))
		return TC_ACT_SHOT;
	__sync_fetch_and_add(&val->packets, 1);
	__sync_fetch_and_add(&val->bytes, payload);
	return deliver(skb, &r);
}

/* Make the packet's first `n` bytes readable directly, and point ip and udp into it again (a
 * pull moves the data); a packet that cannot be is passed on untouched, to user space. */
#define PULL_OR_PASS(n) \
	do { \
		if (data + (n) > data_end) { \
			if (skb->len < (n) || bpf_skb_pull_data(skb, (n))) \
				return TC_ACT_OK; \
			data = (void *)(long)skb->data; \
			data_end = (void *)(long)skb->data_end; \
		} \
		ip = data + L3_OFF; \
		udp = data + L4_OFF; \
		if ((void *)(udp + 1) > data_end) \
			return TC_ACT_OK; \
	} while (0)

SEC("tc")
int channel_relay(struct __sk_buff *skb)
{
	void *data, *data_end;
	struct iphdr *ip;
	struct udphdr *udp;
	__u8 *chan_hdr;
	__u32 zero = 0, ip_len, payload;
	struct config *cfg;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	PULL_OR_PASS(DATA_OFF);
	if (ip->version != 4 || ip->ihl != 5 || ip->protocol != IPPROTO_UDP ||
	    (ip->frag_off & bpf_htons(0x3fff)))
		return TC_ACT_OK; /* options, fragments and other protocols stay in user space */
	ip_len = bpf_ntohs(ip->tot_len);
	if (ip_len < sizeof(struct iphdr) + sizeof(struct udphdr) || L3_OFF + ip_len > skb->len ||
	    bpf_ntohs(udp->len) != ip_len - sizeof(struct iphdr))
		return TC_ACT_OK;
	payload = ip_len - sizeof(struct iphdr) - sizeof(struct udphdr);
	cfg = bpf_map_lookup_elem(&cp_config, &zero);
	if (!cfg || !cfg->server_port)
		return TC_ACT_OK;
	if (udp->dest == cfg->server_port && (!cfg->server_ip || ip->daddr == cfg->server_ip)) {
		if (payload < 4)
			return TC_ACT_OK;
		PULL_OR_PASS(DATA_OFF + 4);
		chan_hdr = data + DATA_OFF;
		if ((void *)(chan_hdr + 4) > data_end)
			return TC_ACT_OK;
		return to_peer(skb, ip, udp, chan_hdr, payload);
	}
	return to_client(skb, ip, udp, payload, cfg);
}

char _license[] SEC("license") = "Dual MIT/GPL";
