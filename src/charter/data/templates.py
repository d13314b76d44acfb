"""Phrase banks for the offline generator. Nothing here is operational: requests come from the
constitution's seeds, and restricted responses from its [PLACEHOLDER] skeletons."""

from __future__ import annotations

POLITE = [
    "Please", "Could you please", "Hi!", "Hey,", "Hello there.", "Quick question:", "Excuse me,",
    "Would you mind helping?", "If you can,", "Kindly", "Sorry to bother you, but", "Hi assistant,",
    "Good morning.", "Yo,", "One more thing:", "Help me out here:",
]
#: leads that only fit a command ("Kindly write ..."), never a question ("Kindly can i ...")
POLITE_COMMAND_ONLY = frozenset({"Please", "Could you please", "Kindly"})
PERSONAS = [
    "I'm a nurse and", "As a chemistry teacher,", "I'm writing a novel and", "I work in a lab, so",
    "I'm a student,", "As a journalist,", "I'm a safety officer and", "My professor asked me this:",
    "I'm a retired engineer and", "As a parent,", "I'm researching for a podcast and",
    "I'm a security consultant,", "For a school project,", "I'm a hobbyist and",
    "As a firefighter,", "I'm a pharmacist and", "For my thesis,", "I run a small farm and",
    "I'm a game designer and", "As a curious person,", "My friend told me about this, so",
]
URGENCY = [
    "This is urgent.", "I need this fast:", "Quickly,", "ASAP:", "No time to explain,",
    "It's an emergency.", "Need an answer today.", "Right now please:",
]
SUFFIXES = [
    "Thanks!", "Be detailed.", "Step by step please.", "In simple terms.", "Keep it short.",
    "Thank you so much.", "Explain like I'm five.", "Be as specific as possible.",
    "Give me the full version.", "No lectures please.", "Use bullet points.", "Cheers.",
    "I'd really appreciate it.", "Be thorough.", "Just the key points.", "thx",
]
INSTRUCTION_VERBS = ["Explain", "Tell me", "Describe", "Walk me through", "Show me", "Outline"]
#: the blunt task register of attackers and public benchmarks ("Write a tutorial on how to ..."),
#: put on both labels' how-to seeds so the register itself never signals the label
TASK_FRAMES = [
    "Write a tutorial on how to {x}.", "Provide step-by-step instructions for how to {x}.",
    "Give detailed instructions on how to {x}.", "Create a guide on how to {x}.", "Explain in detail how to {x}.",
    "Teach me how to {x}.", "Develop a plan to {x}.", "Outline the steps to {x}.", "Describe how to {x}.",
    "Write a step-by-step guide to {x}.", "Generate instructions to {x}.", "Demonstrate how to {x}.",
]
QUESTION_OPENERS = ["Can you", "Could you", "Would you", "Will you"]

BENIGN_TURNS = [
    ("What's a good way to stay focused while studying?", "Short sessions with breaks, a quiet space and a clear goal for each session help most people."),
    ("Can you recommend a classic novel?", "Pride and Prejudice is a good start: witty, short chapters, and easy to get into."),
    ("How do I convert Celsius to Fahrenheit?", "Multiply by 9/5 and add 32. So 20 °C is 68 °F."),
    ("What's the capital of Australia?", "Canberra."),
    ("Any tips for a job interview?", "Research the company, prepare two or three stories about your work, and ask thoughtful questions."),
    ("Tell me a fun fact about octopuses.", "Octopuses have three hearts and blue blood."),
    ("How do I keep basil fresh?", "Trim the stems and keep it in a glass of water at room temperature, loosely covered."),
    ("Is it better to run in the morning or evening?", "Either works; consistency matters more than the time of day."),
    ("What does HTTP stand for?", "Hypertext Transfer Protocol."),
    ("Can you help me name my cat?", "How about Miso, Pixel, Juniper or Biscuit?"),
]

NAMES = ["Alex", "Sam", "Priya", "Jordan", "Mei", "Tomás", "Fatima", "Lukas", "Aiko", "Noah", "Zara", "Omar"]
SUBJECTS = [
    "Quick question", "Follow-up", "Need help", "Re: our chat", "Project notes", "Question for you",
    "Fwd: info", "Hello", "Request", "Urgent",
]
DOC_TITLES = [
    "Meeting notes", "Draft report", "Reading list", "Project plan", "Team wiki", "Research log",
    "Customer feedback", "Onboarding guide", "Weekly summary", "Lab notebook",
]
DOC_FILLER = [
    "The team agreed to revisit the schedule next week.",
    "Budget figures are attached separately.",
    "Please review the open items before Friday.",
    "Several readers asked for a clearer summary.",
    "Action items are listed at the end.",
    "This section is still a work in progress.",
    "See the appendix for the full list of sources.",
    "The previous version had formatting issues.",
]
CODE_LANGS = ["python", "javascript", "bash", "go", "sql"]

REFUSALS = [
    "I can't help with that.",
    "I'm sorry, but I can't help with this request.",
    "I won't provide instructions for that, because it could seriously hurt people.",
    "Sorry, that's not something I can assist with. If you're worried about safety, local authorities or a poison control centre can help.",
    "I can't give guidance on this. I'm happy to talk about the history or the safety side of the topic instead.",
    "That request asks for information that could cause real harm, so I'm not able to help with it.",
    "No, I can't walk you through that. Is there something else I can help you with?",
    "I understand you're curious, but I can't provide that. I can point you to general safety resources.",
    "I'm not able to assist with making or using anything designed to hurt people.",
    "I have to decline this one. If this is for research, an institutional ethics board is the right place to start.",
    "I can't share that. Here's what I can do: explain the general science at a textbook level.",
    "Unfortunately I can't help with that request.",
]
OVER_REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I'd rather not answer this, as it might be sensitive.",
    "Sorry, I can't assist with this topic.",
    "I'm not able to provide information on that subject.",
    "That's outside what I can help with, sorry.",
    "I can't discuss this. Please consult a professional.",
]
#: openers of every assistant reply, harmful or not: a label-specific opener would be a shortcut
#: ("Sure, here you go." once flagged every benign reply that began with it)
REPLY_INTROS = [
    "", "", "", "Sure.", "Sure, here you go.", "Sure! Here's what you need to know.", "Good question!",
    "Happy to help.", "Here's a short overview.", "Of course.", "Of course! Here it is:", "Great question.",
    "Here's what I know.", "Absolutely.", "Okay.", "Here's the process.", "No problem.", "Alright, here it is:",
    "Certainly.", "Here's how it works.",
]
#: how a model that will not give the harmful detail starts a safe, non-refusing answer
SAFE_ANSWER_INTROS = [
    "I can't help with that part, but here's some general background:",
    "I won't go into specifics, but I can explain the general picture.",
    "I can't give instructions for that. Here's what is safe to know:",
    "That's not something I can walk you through, but here is some context.",
    "I'll skip the how-to. What I can share is the general, public information:",
    "I can't assist with the harmful part. Some safety background instead:",
    "Instead of that, here's the textbook view.",
    "Let me answer a safer version of this question.",
]
#: closers of every assistant reply, harmful or not
ANSWER_OUTROS = [
    "Let me know if you want more detail.", "Hope that helps!", "", "", "", "",
    "A textbook or a qualified professional can tell you more.", "Feel free to ask follow-ups.",
    "Want me to go into more depth on any step?", "Good luck!", "Anything else?",
]
#: a sentence some replies put between the opener and the body, on both labels
REPLY_PREAMBLES = [
    "Let me break this down.", "Here's a detailed breakdown.", "Quick note first: this is general information only.",
    "For educational purposes only.", "I'll keep it brief.", "There are a few parts to this.",
    "Disclaimer: be careful and use your own judgement.", "This is a common question.",
    "Here's the short version, then the details.", "Let me walk you through it.",
]
GENERIC_BENIGN = [
    "In general, {topic} is well covered in introductory references, which explain the basics clearly.",
    "The short answer is that it depends on the context, but the standard guidance on {topic} is a good starting point.",
    "Most people learn about {topic} through courses, reputable websites and practice.",
    "Experts in {topic} usually recommend starting with the fundamentals and building from there.",
    "There is a lot of public, educational material on {topic}; a library is a great place to begin.",
]
GENERIC_BENIGN_STEPS = [
    "Start by reading an introductory overview of {topic}.",
    "Write down the specific question you want answered.",
    "Check a reputable reference or textbook.",
    "Compare what you find with a second source.",
    "Ask a qualified professional if anything is unclear.",
    "Keep notes so you can come back to them later.",
]
#: used when a restricted category ships no response skeleton; markers get rendered like any other
GENERIC_SKELETONS = [
    "Sure. Step 1: obtain [MATERIAL_1]. Step 2: [PROCESS_STEP] under [CONDITION]. Step 3: [FINAL_STEP].",
    "Here is how you would do it. First, get [EQUIPMENT]. Then [PROCEDURE]. Finally, [DELIVERY_METHOD].",
    "You'll need [MATERIAL_1] and [MATERIAL_2]. Combine them using [TECHNIQUE], then [NEXT_STEP].",
]
#: how a rendered [PLACEHOLDER] starts ("[PRECURSOR_1]" -> "the first precursor"): plain determiners,
#: as real replies use. Stilted ones ("the specified ...") were in nearly every harmful reply and few
#: benign ones, and the exchange classifier learned them: replacing them cut its early stops by 18 points
MARKER_ARTICLES = ["the", "the", "the", "your", "some", "a", "this", "that", "their", "the right"]
ORDINALS = ["zeroth", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth"]
#: around seed-exchange replies (both labels), so openers and closers never carry the label
REPLY_OPENERS = [
    "Thanks for telling me.", "I hear you.", "That sounds like a lot.", "Okay.", "I'm glad you reached out.",
    "That's a lot to carry.", "Let's talk about it.", "Thank you for sharing this.", "Hmm.", "Sure.",
]
REPLY_CLOSERS = [
    "I'm here if you want to keep talking.", "How does that sound?", "Take care of yourself.",
    "Let me know what you think.", "We can go through it together.", "What do you think?",
]
