import type { Document } from "mongodb";
import type { UsageBucket, UsageScan } from "../../domain/usage.js";
import type { UsageKind } from "../../models/usage.js";

const NUMBER_TYPES = ["int", "long", "double", "decimal"];
const num = (x: unknown) => ({ $cond: [{ $in: [{ $type: x }, NUMBER_TYPES] }, x, 0] });
const str = (x: unknown) => ({ $cond: [{ $eq: [{ $type: x }, "string"] }, x, null] });

/**
 * The window of `$createdAt` among `boundaries`, as a balanced tree of `$cond`s: about log2(n)
 * comparisons a document. (`$dateTrunc` with a timezone would do for most windows, but the
 * MongoDB-compatible server the suite runs on answered wrong days with it; the tree gives every
 * store the same windows, worked out in the query's time zone beforehand.)
 */
function windowTree(boundaries: readonly number[], lo: number, hi: number): unknown {
  if (hi - lo <= 1) return lo;
  const mid = (lo + hi) >> 1;
  return {
    $cond: [
      { $lt: ["$createdAt", new Date(boundaries[mid]!)] },
      windowTree(boundaries, lo, mid),
      windowTree(boundaries, mid, hi),
    ],
  };
}

/**
 * The usage pipeline of a MongoDB store (docs/usage.md): the rules of `src/domain/usage.ts` as
 * aggregation expressions, each entry split into its parts (`$unwind`), summed by `$group`. Entries
 * are read by the (userId, seq) index for one account, by the createdAt index for every account.
 */
export function usagePipeline(scan: UsageScan): Document[] {
  const match: Document = {
    createdAt: { $gte: scan.from, $lt: scan.to },
    type: { $in: ["deduct", "commit_reserved", "void"] },
  };
  if (scan.account !== null) match.userId = scan.account;
  const kind = {
    $cond: [
      {
        $and: [
          { $eq: [{ $type: "$metadata.paymentId" }, "string"] },
          { $in: [{ $type: "$metadata.refundedAmount" }, NUMBER_TYPES] },
        ],
      },
      {
        $cond: [
          { $eq: [{ $substrCP: [{ $ifNull: ["$description", ""] }, 0, 12] }, "Lost dispute"] },
          "clawback",
          "refund",
        ],
      },
      { $cond: [{ $eq: ["$type", "void"] }, null, "spend"] },
    ],
  };
  const requests = {
    $cond: [
      { $ne: ["$kind", "spend"] },
      0,
      {
        $cond: [
          { $eq: ["$type", "deduct"] },
          { $cond: [{ $eq: [{ $ifNull: ["$reservationId", null] }, null] }, 1, 0] },
          {
            $cond: [
              { $in: [{ $type: "$metadata.leaseWindow.requests" }, NUMBER_TYPES] },
              "$metadata.leaseWindow.requests",
              1,
            ],
          },
        ],
      },
    ],
  };
  const leased = { $and: [{ $eq: ["$kind", "spend"] }, { $isArray: "$metadata.leaseWindow.parts" }] };
  const priced = {
    $and: [
      { $eq: ["$kind", "spend"] },
      { $not: [{ $isArray: "$metadata.leaseWindow.parts" }] },
      { $isArray: "$metadata.usages" },
      { $gt: [{ $size: { $cond: [{ $isArray: "$metadata.usages" }, "$metadata.usages", []] } }, 0] },
    ],
  };
  const usages = { $cond: [{ $isArray: "$metadata.usages" }, "$metadata.usages", []] };
  const usageSum = { $reduce: { input: usages, initialValue: 0, in: { $add: ["$$value", num("$$this.amount")] } } };
  const leaseSum = (field: string) => ({
    $reduce: {
      input: "$metadata.leaseWindow.parts",
      initialValue: 0,
      in: { $add: ["$$value", num(`$$this.${field}`)] },
    },
  });
  const whole = (credits: unknown, req: unknown) => ({
    model: null,
    feature: null,
    spender: null,
    own: false,
    credits,
    requests: req,
    input: 0,
    output: 0,
    cached: 0,
  });
  const parts = {
    $cond: [
      "$leased",
      {
        $concatArrays: [
          {
            $map: {
              input: "$metadata.leaseWindow.parts",
              as: "p",
              in: {
                model: str("$$p.model"),
                feature: str("$$p.feature"),
                spender: str("$$p.spender"),
                own: true,
                credits: num("$$p.credits"),
                requests: num("$$p.requests"),
                input: num("$$p.inputTokens"),
                output: num("$$p.outputTokens"),
                cached: num("$$p.cachedTokens"),
              },
            },
          },
          {
            $cond: [
              { $or: [{ $ne: ["$amount", leaseSum("credits")] }, { $ne: ["$requests", leaseSum("requests")] }] },
              [
                {
                  ...whole(
                    { $subtract: ["$amount", leaseSum("credits")] },
                    { $subtract: ["$requests", leaseSum("requests")] },
                  ),
                  own: true,
                },
              ],
              [],
            ],
          },
        ],
      },
      {
        $cond: [
          "$priced",
          {
            $concatArrays: [
              {
                $map: {
                  input: { $range: [0, { $size: usages }] },
                  as: "i",
                  in: {
                    $let: {
                      vars: { u: { $arrayElemAt: [usages, "$$i"] } },
                      in: {
                        model: str("$$u.model"),
                        feature: null,
                        spender: null,
                        own: false,
                        credits: num("$$u.amount"),
                        requests: { $cond: [{ $eq: ["$$i", 0] }, "$requests", 0] },
                        input: num("$$u.inputTokens"),
                        output: num("$$u.outputTokens"),
                        cached: num("$$u.cachedTokens"),
                      },
                    },
                  },
                },
              },
              {
                $cond: [{ $ne: ["$amount", usageSum] }, [whole({ $subtract: ["$amount", usageSum] }, 0)], []],
              },
            ],
          },
          [whole("$amount", "$requests")],
        ],
      },
    ],
  };
  const id: Document = { w: "$w", kind: "$kind" };
  scan.groupBy.forEach((d, i) => {
    const name = `g${i}`;
    switch (d) {
      case "account":
        id[name] = "$userId";
        break;
      case "model":
        id[name] = "$parts.model";
        break;
      case "feature":
      case "spender":
        id[name] = { $cond: ["$parts.own", `$parts.${d}`, { $ifNull: [`$${d}`, null] }] };
        break;
      case "reason":
        id[name] = { $ifNull: ["$description", null] };
        break;
      default: {
        // Keys are letters, digits, _ and - (UsageDimension): a plain field path.
        const v = `$metadata.${d.slice("metadata.".length)}`;
        id[name] = {
          $switch: {
            branches: [
              { case: { $eq: [{ $type: v }, "string"] }, then: v },
              { case: { $in: [{ $type: v }, [...NUMBER_TYPES, "bool"]] }, then: { $toString: v } },
            ],
            default: null,
          },
        };
      }
    }
  });
  const sort: Document = {};
  if (scan.orderBy === "credits") sort.credits = -1;
  sort["_id.w"] = 1;
  sort.ko = 1;
  scan.groupBy.forEach((_, i) => (sort[`_id.g${i}`] = 1));
  return [
    { $match: match },
    {
      $project: {
        userId: 1,
        type: 1,
        amount: 1,
        metadata: 1,
        description: 1,
        spender: 1,
        feature: 1,
        reservationId: 1,
        createdAt: 1,
        kind,
      },
    },
    { $match: { kind: { $in: [...scan.kinds] } } },
    { $addFields: { w: windowTree(scan.boundaries, 0, scan.boundaries.length - 1), requests, leased, priced } },
    { $addFields: { parts } },
    { $unwind: "$parts" },
    {
      $group: {
        _id: id,
        credits: { $sum: "$parts.credits" },
        requests: { $sum: "$parts.requests" },
        input: { $sum: "$parts.input" },
        output: { $sum: "$parts.output" },
        cached: { $sum: "$parts.cached" },
      },
    },
    {
      $addFields: {
        ko: {
          $switch: {
            branches: [
              { case: { $eq: ["$_id.kind", "spend"] }, then: 0 },
              { case: { $eq: ["$_id.kind", "refund"] }, then: 1 },
            ],
            default: 2,
          },
        },
      },
    },
    { $sort: sort },
    { $limit: scan.limit + 1 },
  ];
}

/** A document of `usagePipeline` as a bucket. */
export function usageBucketOf(doc: Document, scan: UsageScan): UsageBucket {
  const id = doc._id as Record<string, unknown>;
  const groups: Record<string, string | null> = {};
  scan.groupBy.forEach((d, i) => {
    const v = id[`g${i}`];
    groups[d] = v === null || v === undefined ? null : String(v);
  });
  return {
    window: Number(id.w),
    kind: id.kind as UsageKind,
    groups,
    credits: Number(doc.credits),
    requests: Number(doc.requests),
    inputTokens: Number(doc.input),
    outputTokens: Number(doc.output),
    cachedTokens: Number(doc.cached),
  };
}
